"""Telling workers to stop a job: the cancel broadcast reaches the worker running it now,
the cancellations KV entry any worker that picks it up later (or missed the broadcast)."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.kv import KeyValue

from genmesh.v1 import bus_pb2
from services.common.bus import Bus


async def stop_workers(
    nc: Client, bus: Bus, cancellations: KeyValue, job_id: str, reason: str
) -> None:
    """Ask every worker running `job_id` to stop it; call after the job's end is recorded."""
    request = bus_pb2.CancelRequest(job_id=job_id, reason=reason).SerializeToString()
    await cancellations.put(job_id, request)
    await nc.publish(bus.cancel_subject, request)
