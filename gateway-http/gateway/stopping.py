"""Ending the bridge's live streams when it stops.

An SSE stream or WebSocket watching the feed (or a long job) never ends on its own. Left to
uvicorn, a stopping server waits out its graceful timeout for them, then cancels them
mid-response (the client sees a broken transfer; the log an ERROR and a traceback), and closes
WebSockets 1012 itself. So the server calls `stop()` first: every stream sees `stopping` set
and ends its own way (an SSE response completes, a WebSocket closes 1001), and its client
resumes as after any reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class LiveStreams:
    """The bridge's open live streams, and the signal that tells them to end."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._open = 0
        self._none_open = asyncio.Event()
        self._none_open.set()

    @contextlib.contextmanager
    def open(self) -> Iterator[asyncio.Event]:
        """Count a stream as open while inside; yields `stopping`, which it must watch."""
        self._open += 1
        self._none_open.clear()
        try:
            yield self.stopping
        finally:
            self._open -= 1
            if not self._open:
                self._none_open.set()

    async def stop(self, within: float | None) -> None:
        """Tell every stream to end, and wait up to `within` seconds until all have (one
        writing to a client that stopped reading can take longer; the server's own graceful
        timeout then still applies)."""
        self.stopping.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._none_open.wait()
