"""Streamed text shown to watchers while it arrives, without an event per token."""

from __future__ import annotations

import time

from services.providers.adapter import JobContext

# Progress messages are "a short human line": show only the newest part of the text.
TAIL_CHARS = 200


class StreamedText:
    """Collects streamed pieces; `report_if_due` emits the text's tail at most every `interval`."""

    def __init__(self, ctx: JobContext, interval: float) -> None:
        self._ctx = ctx
        self._interval = interval
        self._pieces: list[str] = []
        self._chars = 0
        self._reported_chars = 0
        self._last = time.monotonic()

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def add(self, piece: str) -> None:
        self._pieces.append(piece)
        self._chars += len(piece)

    async def report_if_due(self) -> None:
        now = time.monotonic()
        if self._chars == self._reported_chars or now - self._last < self._interval:
            return
        self._last = now
        self._reported_chars = self._chars
        text = self.text
        tail = text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]
        await self._ctx.progress(None, tail)
