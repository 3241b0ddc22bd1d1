"""What the bytes say: the media type when the client did not, image size, audio length."""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from services.common.errors import InvalidArgument

log = logging.getLogger(__name__)

GENERIC_MEDIA_TYPE = "application/octet-stream"
WAV_MEDIA_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})
# Bytes read from the start of a file to sniff its type.
HEAD_BYTES = 64
# Bound the work an animated image can cost; frames past this add no duration.
MAX_FRAMES = 10_000

# RFC 6838 restricted-name, for type, subtype and parameter names.
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_TYPE = re.compile(rf"({_NAME})/({_NAME})")
_PARAM = re.compile(rf'({_NAME})=([A-Za-z0-9!#$%&\'*+.^_`|~-]+|"[^"\\\x00-\x1f\x7f]*")')


@dataclass(frozen=True)
class MediaInfo:
    media_type: str
    width: int = 0
    height: int = 0
    duration_seconds: float = 0.0


def normalize_media_type(value: str) -> str:
    """ "type/subtype[; name=value]*" with type, subtype and names lower-cased; "" stays "".

    Raises InvalidArgument when the value is not a media type at all.
    """
    if not value.strip():
        return ""
    if len(value) > 255:
        raise InvalidArgument("media_type is longer than 255 characters")
    head, *params = value.split(";")
    match = _TYPE.fullmatch(head.strip())
    if not match:
        raise InvalidArgument(f"media_type {value!r} is not of the form type/subtype")
    parts = [f"{match[1]}/{match[2]}".lower()]
    for param in params:
        pm = _PARAM.fullmatch(param.strip())
        if not pm:
            raise InvalidArgument(f"media_type {value!r} has a malformed parameter {param!r}")
        parts.append(f"{pm[1].lower()}={pm[2]}")
    return "; ".join(parts)


def essence(media_type: str) -> str:
    """The media type without parameters: "text/plain; charset=utf-8" -> "text/plain"."""
    return media_type.split(";", 1)[0].strip()


def sniff_media_type(head: bytes) -> str | None:
    """The media type the leading bytes announce, or None when they are not recognized."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def probe_file(path: Path | bytes, media_type: str) -> MediaInfo:
    """Sniff the type if `media_type` is "" or generic, then measure images and WAV audio.

    `path` may be the bytes themselves (small uploads never touch a temp file). Blocking for
    a file: call it in a thread. Unreadable or unknown media keep only their type.
    """
    if media_type in ("", GENERIC_MEDIA_TYPE):
        with _open(path) as f:
            media_type = sniff_media_type(f.read(HEAD_BYTES)) or GENERIC_MEDIA_TYPE
    kind = essence(media_type)
    if kind.startswith("image/"):
        width, height, duration = _image(path)
        return MediaInfo(media_type, width, height, duration)
    if kind in WAV_MEDIA_TYPES:
        return MediaInfo(media_type, duration_seconds=_wav_duration(path))
    return MediaInfo(media_type)


def _open(source: Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def _image(path: Path | bytes) -> tuple[int, int, float]:
    if isinstance(path, bytes):
        size = png_size(path)
        if size is not None:
            return (*size, 0.0)
    try:
        # Image.open reads only the header; pixels are decoded only to step through frames.
        with _open(path) as f, Image.open(f) as im:
            width, height = im.size
            frames = getattr(im, "n_frames", 1)
            total_ms = 0.0
            if frames > 1:
                for index in range(min(frames, MAX_FRAMES)):
                    im.seek(index)
                    if "duration" not in im.info:
                        im.load()  # WebP reads a frame's duration only as it decodes it
                    total_ms += float(im.info.get("duration") or 0)
            return width, height, total_ms / 1000.0
    except Exception as exc:
        # Best effort by contract: a corrupt or exotic image is still stored, just unmeasured.
        log.debug("cannot measure image: %s", exc)
        return 0, 0, 0.0


# Bit depths PNG allows for each colour type (and Pillow reads).
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Chunks that may come before the image data here, each with the length Pillow needs of it;
# Pillow reads any other kind (or a shorter one) its own way, so it measures those files.
_PNG_CHUNKS = {b"PLTE": 0, b"tRNS": 6, b"pHYs": 9, b"gAMA": 4, b"sRGB": 1, b"cHRM": 32, b"tEXt": 0}
_INT32 = 2**31 - 1


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a plain still PNG read from its header chunks, where Pillow would
    read the same; None for anything else (an animated PNG, an unusual or unsound header),
    which Pillow then measures. Most outputs are small PNGs, and opening them with Pillow
    cost more than the rest of storing one."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    size: tuple[int, int] | None = None
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        body = data[at + 8 : at + 8 + length]
        crc = data[at + 8 + length : at + 12 + length]
        if len(body) < length or len(crc) < 4 or zlib.crc32(kind + body) != int.from_bytes(crc):
            return None  # truncated or damaged: as Pillow does, by its own reading
        if size is None:
            if kind != b"IHDR" or length != 13:
                return None
            width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
                ">IIBBBBB", body
            )
            if (
                not 0 < width <= _INT32
                or not 0 < height <= _INT32
                # Past this Pillow warns of, or refuses, a decompression bomb.
                or width * height > (Image.MAX_IMAGE_PIXELS or math.inf)
                or depth not in _PNG_DEPTHS.get(colour, ())
                or (compression, filtering) != (0, 0)
                or interlace not in (0, 1)
            ):
                return None
            size = (width, height)
        elif kind == b"IDAT":
            return size
        elif length < _PNG_CHUNKS.get(kind, math.inf):
            return None  # animation (acTL), or any chunk Pillow reads otherwise
        at += 12 + length
    return None


def _wav_duration(path: Path | bytes) -> float:
    """Seconds of the samples present. Not `wave`: it trusts the declared data size, which a
    streaming writer leaves at 0xFFFFFFFF and a cut-off file overstates; this reads the
    chunks itself, so float and extensible WAVs are measured too."""
    try:
        with _open(path) as f:
            header = f.read(12)
            if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
                return 0.0
            byte_rate = block_align = 0
            while chunk := f.read(8):
                if len(chunk) < 8:
                    return 0.0
                chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if chunk_id == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    if len(fmt) >= 14:
                        byte_rate, block_align = struct.unpack("<IH", fmt[8:14])
                elif chunk_id == b"data":
                    # Streaming writers leave 0xFFFFFFFF; the data then runs to the end.
                    start = f.tell()
                    available = f.seek(0, 2) - start
                    data_size = available if size == 0xFFFFFFFF else min(size, available)
                    if block_align:
                        data_size -= data_size % block_align  # whole frames only
                    return data_size / byte_rate if byte_rate else 0.0
                else:
                    f.seek(size + (size & 1), 1)
    except (OSError, struct.error):
        pass
    return 0.0
