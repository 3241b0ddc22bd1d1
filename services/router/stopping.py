"""Telling workers to stop a job the router has ended (cancelled, or out of time)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.js.kv import KeyValue

from genmesh.v1 import bus_pb2
from services.common.backoff import doubling
from services.common.bus import UNCONFIRMED, Bus
from services.common.cancelling import cancel_task

log = logging.getLogger(__name__)

# Seconds between tries to tell workers while NATS is out of reach, doubling up to RETRY_MAX.
RETRY_FIRST = 0.5
RETRY_MAX = 5.0


class WorkerStopper:
    """The cancel broadcast stops a running job at once; the cancellations KV entry makes a
    worker that missed it (or fetches the job later) skip it.

    The job's end is recorded before workers are told, so NATS out of reach does not fail
    the call: what could not be told waits in one queue, sent by one task once NATS answers
    (or given up when the router stops; such a job then runs to its end on its worker, and
    that outcome is dropped). While the queue is not empty, new stops join it at once rather
    than each waiting out a timeout of its own."""

    def __init__(self, nc: Client, bus: Bus, cancellations: KeyValue) -> None:
        self._nc = nc
        self._bus = bus
        self._cancellations = cancellations
        self._waiting: dict[str, bus_pb2.CancelRequest] = {}
        self._retrying: asyncio.Task[None] | None = None

    async def stop(self, job_id: str, reason: str) -> None:
        request = bus_pb2.CancelRequest(job_id=job_id, reason=reason)
        if self._waiting:
            self._queue(request)
            return
        try:
            await self._tell(request)
        except UNCONFIRMED as exc:
            log.warning("could not tell workers to stop job %s (%r); will retry", job_id, exc)
            self._queue(request)
        except asyncio.CancelledError:
            # The caller went away mid-way; the job's end is recorded all the same.
            self._queue(request)
            raise

    async def close(self) -> None:
        """Give up what is still waiting (the router is stopping)."""
        await cancel_task(self._retrying)

    async def _tell(self, request: bus_pb2.CancelRequest) -> None:
        await self._cancellations.put(request.job_id, request.SerializeToString())
        await self._nc.publish(self._bus.cancel_subject, request.SerializeToString())

    def _queue(self, request: bus_pb2.CancelRequest) -> None:
        self._waiting[request.job_id] = request
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry())

    async def _retry(self) -> None:
        failures = 1  # the try that queued the first stop
        while self._waiting:
            await asyncio.sleep(doubling(failures, RETRY_FIRST, RETRY_MAX))
            for job_id, request in list(self._waiting.items()):
                try:
                    await self._tell(request)
                except UNCONFIRMED:
                    failures += 1
                    break
                except Exception:
                    log.exception("telling workers to stop job %s failed; giving up", job_id)
                else:
                    log.info("told workers to stop job %s", job_id)
                self._waiting.pop(job_id, None)
            else:
                failures = 1
