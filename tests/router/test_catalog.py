"""The router's provider catalog against a real JetStream KV bucket."""

from __future__ import annotations

import time

import nats

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.bus import Bus
from services.router.catalog import Catalog
from tests.infra import eventually


def _registration(name: str, seen_ago: float, live: int = 1) -> bytes:
    reg = provider_service_pb2.Provider(name=name, tasks=[job_pb2.TASK_TEXT_TO_TEXT])
    reg.health.status = provider_service_pb2.PROVIDER_STATUS_AVAILABLE
    reg.health.live_workers = live
    reg.health.last_seen.FromNanoseconds(int((time.time() - seen_ago) * 1e9))
    return reg.SerializeToString()


async def test_gone_workers_are_pruned_but_the_provider_stays_known(
    nats_url: str, nats_prefix: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        kv = await Bus(nats_prefix, 1).providers_kv(nc.jetstream())
        await kv.put("sandbox.old1", _registration("sandbox", 7200, live=0))
        await kv.put("sandbox.old2", _registration("sandbox", 5000))
        await kv.put("sandbox.live", _registration("sandbox", 1))
        # Only one registration, long gone: kept, so jobs for it still queue.
        await kv.put("espeak.gone", _registration("espeak", 9000, live=0))
        catalog = Catalog(kv, liveness=15.0, retention=3600.0)
        await catalog.start()
        try:
            assert sorted(await catalog.prune()) == ["sandbox.old1", "sandbox.old2"]
            assert sorted(await kv.keys()) == ["espeak.gone", "sandbox.live"]
            await eventually(lambda: _live_workers(catalog, "sandbox") == 1)
            espeak = catalog.get("espeak")
            assert espeak is not None
            assert espeak.health.status == provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE
            assert await catalog.prune() == []
        finally:
            await catalog.stop()
    finally:
        await nc.close()


def _live_workers(catalog: Catalog, name: str) -> int:
    provider = catalog.get(name)
    return provider.health.live_workers if provider is not None else 0
