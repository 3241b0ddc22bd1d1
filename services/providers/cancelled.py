"""Which jobs have been cancelled, kept in memory from the cancellations KV bucket.

A worker checks every job it fetches, and every running job on each heartbeat, so asking
the bucket each time would cost a JetStream round trip per job. Watching the bucket keeps a
local copy current instead; the cancel broadcast still stops a running job at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)


class CancelledJobs:
    """The set of cancelled job ids, following the bucket from start() until stop()."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._ids: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def add(self, job_id: str) -> None:
        """Record a cancel heard on the broadcast before the bucket's update arrives."""
        self._ids.add(job_id)

    async def start(self) -> None:
        """Load the cancellations so far (returns once they are in), then follow updates."""
        watcher = await self._kv.watchall()
        loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._follow(watcher, loaded))
        await loaded

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher, loaded: asyncio.Future[None]) -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    # The end of what the bucket held when the watch began.
                    if not loaded.done():
                        loaded.set_result(None)
                elif entry.operation in (KV_DEL, KV_PURGE):
                    self._ids.discard(entry.key)
                else:
                    self._ids.add(entry.key)
        finally:
            if not loaded.done():
                loaded.set_result(None)
            with contextlib.suppress(Exception):
                await watcher.stop()
