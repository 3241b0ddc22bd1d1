"""Telling workers to stop a job the router has ended (cancelled, or out of time)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.js.kv import KeyValue

from genmesh.v1 import bus_pb2
from services.common.bus import UNCONFIRMED, Bus
from services.common.cancelling import cancel_tasks

log = logging.getLogger(__name__)

# Seconds between tries to tell workers while NATS is out of reach, doubling up to RETRY_MAX.
RETRY_FIRST = 0.5
RETRY_MAX = 5.0


class WorkerStopper:
    """The cancel broadcast stops a running job at once; the cancellations KV entry makes a
    worker that missed it (or fetches the job later) skip it.

    The job's end is recorded before workers are told, so NATS out of reach does not fail
    the call: telling them is retried in the background until NATS answers (or the router
    stops; the job then runs to its end on its worker, and that outcome is dropped)."""

    def __init__(self, nc: Client, bus: Bus, cancellations: KeyValue) -> None:
        self._nc = nc
        self._bus = bus
        self._cancellations = cancellations
        self._retries: set[asyncio.Task[None]] = set()

    async def stop(self, job_id: str, reason: str) -> None:
        request = bus_pb2.CancelRequest(job_id=job_id, reason=reason)
        try:
            await self._tell(request)
        except UNCONFIRMED as exc:
            log.warning("could not tell workers to stop job %s (%r); will retry", job_id, exc)
            retry = asyncio.create_task(self._retry(request))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)

    async def close(self) -> None:
        """Give up the retries still running (the router is stopping)."""
        await cancel_tasks(list(self._retries))

    async def _tell(self, request: bus_pb2.CancelRequest) -> None:
        await self._cancellations.put(request.job_id, request.SerializeToString())
        await self._nc.publish(self._bus.cancel_subject, request.SerializeToString())

    async def _retry(self, request: bus_pb2.CancelRequest) -> None:
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                await self._tell(request)
            except UNCONFIRMED:
                delay = min(delay * 2, RETRY_MAX)
                continue
            log.info("told workers to stop job %s", request.job_id)
            return
