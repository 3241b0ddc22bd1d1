"""The WebSocket handshake's size limit, raised so the feed's resume cursor fits."""

from __future__ import annotations

import websockets.http11

# A feed's cursor names every job it follows (tens of KiB during a large batch), and goes in
# the request line (`/v1/jobs:watch?cursor=…`). Past websockets' default of 8 KiB per line
# the handshake failed, so the client could never resume. About 38,000 followed jobs fit.
MAX_LINE_BYTES = 1024 * 1024


def allow_long_cursors() -> None:
    """Let a handshake's lines (the request line with its query, each header) be as long as
    MAX_LINE_BYTES; the HTTP parser in front of it already read the whole request head."""
    # A module global, read by each handshake: uvicorn's default WebSocket stack (its
    # sans-I/O websockets protocol) offers no setting for it.
    websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH, MAX_LINE_BYTES)
