"""Telling workers to stop a job the router has ended (cancelled, or out of time)."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.kv import KeyValue

from genmesh.v1 import bus_pb2
from services.common.bus import Bus


class WorkerStopper:
    """The cancel broadcast stops a running job at once; the cancellations KV entry makes a
    worker that missed it (or fetches the job later) skip it."""

    def __init__(self, nc: Client, bus: Bus, cancellations: KeyValue) -> None:
        self._nc = nc
        self._bus = bus
        self._cancellations = cancellations

    async def stop(self, job_id: str, reason: str) -> None:
        request = bus_pb2.CancelRequest(job_id=job_id, reason=reason)
        await self._cancellations.put(job_id, request.SerializeToString())
        await self._nc.publish(self._bus.cancel_subject, request.SerializeToString())
