"""Helpers for adapters of hosted, polled providers: inputs sent inline as data URIs, remote
outputs fetched into bytes, progress read from log text, resumable requests looked up."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from typing import Any, TypeGuard

import httpx

from services.providers.adapter import Fatal, InvalidInput, Output, Retryable
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP

# Magic numbers of the formats providers hand back, for bodies that arrive untyped.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"WAVE", 8, "audio/wav"),
    (b"ID3", 0, "audio/mpeg"),
    (b"\xff\xfb", 0, "audio/mpeg"),
    (b"OggS", 0, "audio/ogg"),
    (b"fLaC", 0, "audio/flac"),
    (b"ftyp", 4, "video/mp4"),
    (b"\x1aE\xdf\xa3", 0, "video/webm"),
)
_UNTYPED = {"", "application/octet-stream", "binary/octet-stream"}
# mimetypes knows these under other names, or not at all on a bare system.
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "text/plain": ".txt",
}
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


def data_uri(data: bytes, media_type: str) -> str:
    """`data:<type>;base64,...`: how these providers accept a file inline in JSON."""
    kind = media_type or sniff_media_type(data)
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def sniff_media_type(data: bytes) -> str:
    """The media type the bytes' magic number announces, or application/octet-stream."""
    for magic, offset, kind in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return kind
    return "application/octet-stream"


def extension(media_type: str) -> str:
    return _EXTENSIONS.get(media_type) or mimetypes.guess_extension(media_type) or ".bin"


def is_file_reference(value: Any) -> TypeGuard[str]:
    """True for a string that names a file (an http(s) URL or a data URI), not free text."""
    return isinstance(value, str) and value.startswith(("http://", "https://", "data:"))


def decode_base64(text: str, what: str) -> bytes:
    """Bytes of a base64 payload (padding optional); a malformed one is the provider's fault."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Fatal("bad_output", f"{what} is not valid base64") from None


def percent_in(text: str) -> float | None:
    """The last "NN%" in log text (tqdm bars, "step 3/10 30%"), as a number in 0..100."""
    found = [float(m) for m in _PERCENT.findall(text)]
    found = [f for f in found if f <= 100]
    return found[-1] if found else None


def last_line(text: str, limit: int = 200) -> str:
    """The newest non-empty log line, trimmed for a progress message."""
    for line in reversed(text.splitlines()):
        # tqdm redraws with carriage returns: the text after the last one is what shows.
        line = line.rsplit("\r", 1)[-1].strip()
        if line:
            return line[:limit]
    return ""


class RemoteFiles:
    """Fetches a provider's output files. The key goes only to the provider's own API origin,
    never to the CDN or bucket a result URL points at."""

    def __init__(self, config: ProviderConfig, api: ProviderHTTP) -> None:
        self._api = api
        self._anonymous = ProviderHTTP(config)
        self._origin = _origin(httpx.URL(config.base_url)) if config.base_url else None

    async def aclose(self) -> None:
        await self._anonymous.aclose()

    async def fetch(self, ref: str, stem: str, media_type: str = "") -> Output:
        """The file at `ref` (URL or data URI) as an Output named `<stem><ext>`."""
        if ref.startswith("data:"):
            data, kind = _parse_data_uri(ref)
        else:
            url = httpx.URL(ref)
            client = self._api if _origin(url) == self._origin else self._anonymous
            try:
                data, kind = await client.download(ref)
            except InvalidInput as exc:
                # A result the provider just announced is missing: nothing the caller can fix.
                raise Fatal("output_unavailable", exc.message) from None
        if kind in _UNTYPED:
            kind = media_type or sniff_media_type(data)
        return Output(data, kind, f"{stem}{extension(kind)}")

    def inline(self, payload: str, stem: str, media_type: str = "") -> Output:
        """An Output from base64 text (raw, or a data URI) a worker returned inline."""
        if payload.startswith("data:"):
            data, kind = _parse_data_uri(payload)
        else:
            data, kind = decode_base64(payload, f"{stem} output"), ""
        kind = kind if kind not in _UNTYPED else ""
        kind = kind or media_type or sniff_media_type(data)
        return Output(data, kind, f"{stem}{extension(kind)}")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _parse_data_uri(uri: str) -> tuple[bytes, str]:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise Fatal("bad_output", "the provider returned a malformed data URI")
    kind, *flags = header.removeprefix("data:").split(";")
    if "base64" in flags:
        return decode_base64(payload, "data URI"), kind or "application/octet-stream"
    return payload.encode(), kind or "text/plain"


async def json_or_none(http: ProviderHTTP, method: str, url: str, **kwargs: Any) -> Any | None:
    """Decoded JSON, or None when the provider answers 404 (an unknown or expired request);
    every other failure is classified as ProviderHTTP classifies it."""
    try:
        response = await http.client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise http.transport_error(exc) from None
    if response.status_code == 404:
        return None
    if not response.is_success:
        raise http.status_error(response)
    try:
        return response.json()
    except ValueError:
        raise Retryable("bad_response", "the provider answered with a non-JSON body") from None
