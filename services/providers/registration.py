"""Announces this worker's providers, capabilities and health in the providers KV bucket."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js.kv import KeyValue

from genmesh.v1 import provider_service_pb2
from services.common.clock import stamp
from services.providers.runtime import ProviderWorker

log = logging.getLogger(__name__)

# Seconds between announcements; the router's liveness window must be several of these.
INTERVAL = 5.0
# A provider failing this share of its recent calls (after at least this many) is DEGRADED.
DEGRADED_ERROR_RATE = 0.5
DEGRADED_MIN_CALLS = 5


class Registration:
    """Keys are "<provider>.<worker_id>", one per worker, marked stopped on a clean stop."""

    def __init__(self, kv: KeyValue, workers: list[ProviderWorker], worker_id: str) -> None:
        self._kv = kv
        self._workers = workers
        self._worker_id = worker_id

    def _key(self, worker: ProviderWorker) -> str:
        return f"{worker.adapter.name}.{self._worker_id}"

    async def announce(self, *, stopping: bool = False) -> None:
        for worker in self._workers:
            entry = provider_service_pb2.Provider()
            entry.CopyFrom(worker.description())
            reason = "worker stopped" if stopping else await worker.adapter.check()
            health = entry.health
            health.recent_calls = worker.recent_calls
            health.recent_error_rate = worker.recent_error_rate
            if reason:
                health.status = provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE
            elif (
                worker.recent_calls >= DEGRADED_MIN_CALLS
                and worker.recent_error_rate >= DEGRADED_ERROR_RATE
            ):
                health.status = provider_service_pb2.PROVIDER_STATUS_DEGRADED
                reason = (
                    f"{worker.recent_error_rate:.0%} of the last {worker.recent_calls} calls failed"
                )
            else:
                health.status = provider_service_pb2.PROVIDER_STATUS_AVAILABLE
            health.reason = reason
            # 0 marks a worker that left cleanly; the catalog keeps the provider known,
            # so jobs for it still queue until another worker comes.
            health.live_workers = 0 if stopping else 1
            health.in_flight = 0 if stopping else worker.in_flight
            stamp(health.last_seen)
            await self._kv.put(self._key(worker), entry.SerializeToString())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self.announce()
            except Exception:
                log.warning("could not announce providers; will retry", exc_info=True)

    async def withdraw(self) -> None:
        with contextlib.suppress(Exception):
            await self.announce(stopping=True)
