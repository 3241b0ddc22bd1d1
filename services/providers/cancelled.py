"""Which jobs have been cancelled, kept in memory from the cancellations KV bucket.

A worker checks every job it fetches, and every running job on each heartbeat, so asking
the bucket each time would cost a JetStream round trip per job. Watching the bucket keeps a
local copy current instead; the cancel broadcast still stops a running job at once."""

from __future__ import annotations

import asyncio

from nats.js.kv import KeyValue

from services.common.cancelling import cancel_task
from services.common.kv_follow import follow, removed


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
        self._task = await follow(self._kv, self._apply)

    async def stop(self) -> None:
        await cancel_task(self._task)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if removed(entry):
            self._ids.discard(entry.key)
        else:
            self._ids.add(entry.key)
