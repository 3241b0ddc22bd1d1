"""Fails jobs whose deadline passed while no worker ran them to an end."""

from __future__ import annotations

import asyncio
import logging
import time

from genmesh.v1 import job_pb2
from services.common.clock import stamp
from services.router.deadlines import mark_exceeded
from services.router.fallback import Fallback
from services.router.queues import QueueDepths
from services.router.stopping import WorkerStopper
from services.router.store import Incoming, JobStore
from services.router.watch import WatchHub

log = logging.getLogger(__name__)

# Jobs failed per sweep transaction; the next sweep takes the rest.
SWEEP_BATCH = 200


class DeadlineSweeper:
    """Fails non-terminal jobs past their deadline, through the store (so once, whichever
    replica gets there first), then stops any worker still on them."""

    def __init__(
        self,
        store: JobStore,
        hub: WatchHub,
        stopper: WorkerStopper,
        fallback: Fallback,
        queues: QueueDepths,
        interval: float,
    ) -> None:
        self._store = store
        self._hub = hub
        self._stopper = stopper
        self._fallback = fallback
        self._queues = queues
        self._interval = interval

    async def run(self) -> None:
        while True:
            try:
                while await self.sweep() == SWEEP_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("deadline sweep failed; will retry", exc_info=True)
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int:
        """Fail one batch of overdue jobs; returns how many were overdue."""
        overdue = await self._store.past_deadline(time.time(), SWEEP_BATCH)
        batch = []
        for job_id, state in overdue:
            event = job_pb2.JobEvent(job_id=job_id)
            waiting = state == job_pb2.JOB_STATE_QUEUED
            mark_exceeded(event, "no worker started it in time" if waiting else "still running")
            stamp(event.time)
            batch.append(Incoming(job_id, event))
        routed = await self._store.apply_routed(batch)
        await self._fallback.settle(routed)
        self._queues.observe(routed.events)
        await self._hub.publish(routed.events)
        for event in routed.events:
            await self._stopper.stop(event.job_id, event.error.message)
        return len(overdue)
