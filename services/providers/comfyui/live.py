"""ComfyUI's WebSocket feed (/ws?clientId=…): JSON status messages and binary preview frames.

Binary frames start with a big-endian uint32 event type. PREVIEW_IMAGE (1) is followed by a
uint32 image format (1 JPEG, 2 PNG) and the image; PREVIEW_IMAGE_WITH_METADATA (4) by a uint32
length, that many bytes of JSON metadata (prompt_id, image_type) and the image.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

log = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}
# Some custom nodes send whole images over the socket; previews are far smaller.
_MAX_FRAME = 64 * 1024 * 1024


@dataclass(frozen=True)
class Message:
    """A JSON message: {"type": ..., "data": {...}}."""

    type: str
    data: Mapping[str, Any]

    @property
    def prompt_id(self) -> str:
        return str(self.data.get("prompt_id") or "")


@dataclass(frozen=True)
class Preview:
    """A live preview image; prompt_id only when the frame carried metadata."""

    data: bytes
    media_type: str
    prompt_id: str = ""


def parse_frame(frame: str | bytes) -> Message | Preview | None:
    """The message or preview in one frame; None for frames that are neither (text events,
    kinds this adapter does not know, malformed data)."""
    if isinstance(frame, str):
        try:
            body = json.loads(frame)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            return None
        data = body.get("data")
        return Message(body["type"], data if isinstance(data, dict) else {})
    if len(frame) <= 8:
        return None
    event, word = struct.unpack(">II", frame[:8])
    if event == PREVIEW_IMAGE:
        media_type = IMAGE_FORMATS.get(word)
        return Preview(bytes(frame[8:]), media_type) if media_type else None
    if event == PREVIEW_IMAGE_WITH_METADATA:
        try:
            meta = json.loads(frame[8 : 8 + word])
        except ValueError:
            return None
        image = bytes(frame[8 + word :])
        if not isinstance(meta, dict) or not image:
            return None
        media_type = str(meta.get("image_type") or "image/jpeg")
        return Preview(image, media_type, str(meta.get("prompt_id") or ""))
    return None


def socket_url(base_url: str, client_id: str) -> str:
    """ws(s)://host[/prefix]/ws?clientId=… for an http(s) base URL."""
    scheme, _, rest = base_url.partition("://")
    ws_scheme = "wss" if scheme == "https" else "ws"
    return f"{ws_scheme}://{rest.rstrip('/')}/ws?clientId={quote(client_id)}"


class Feed:
    """The socket for one client id. Without a connection (refused, dropped) `next` only
    waits, and the caller learns what happened by polling the HTTP API instead."""

    def __init__(self, url: str, headers: Mapping[str, str], open_timeout: float = 10.0) -> None:
        self._url = url
        self._headers = dict(headers)
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def __aenter__(self) -> Feed:
        try:
            self._ws = await connect(
                self._url,
                additional_headers=self._headers,
                open_timeout=self._open_timeout,
                max_size=_MAX_FRAME,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            # Polling still works; only live progress and previews are lost.
            log.warning("no ComfyUI WebSocket at %s (%s); polling instead", self._url, exc)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close()

    async def next(self, within: float) -> Message | Preview | None:
        """The next message or preview, or None once `within` seconds pass without one."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if self._ws is None:
                await asyncio.sleep(max(0.0, remaining))
                return None
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):
                    frame = await self._ws.recv()
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                log.warning("ComfyUI WebSocket closed (%s); polling instead", exc)
                self._ws = None
                continue
            if (item := parse_frame(frame)) is not None:
                return item
