"""Router replicas counting each other through heartbeats in a real NATS KV bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import pytest
from nats.aio.client import Client

from services.common.bus import Bus
from services.common.cancelling import cancel_task
from services.router.replicas import Replicas
from tests.infra import eventually
from tests.router.helpers import Clock


@asynccontextmanager
async def replica(
    nc: Client, prefix: str, liveness: float, clock: Clock | None = None
) -> AsyncIterator[Replicas]:
    kv = await Bus(prefix).routers_kv(nc.jetstream(), liveness)
    replicas = Replicas(kv, liveness) if clock is None else Replicas(kv, liveness, clock=clock)
    await replicas.start()
    try:
        yield replicas
    finally:
        await replicas.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def test_replicas_count_each_other_and_a_clean_stop_counts_at_once(
    nc: Client, nats_prefix: str
) -> None:
    # Far longer than the test waits: only the deleted key can make a stopped one go.
    liveness = 60.0
    async with replica(nc, nats_prefix, liveness) as a:
        assert a.count() == 1
        async with replica(nc, nats_prefix, liveness) as b:
            # b found a in the bucket; a hears b's first heartbeat.
            assert b.count() == 2
            await eventually(lambda: a.count() == 2)
            async with replica(nc, nats_prefix, liveness) as c:
                assert c.count() == 3
                await eventually(lambda: a.count() == b.count() == 3)
            await eventually(lambda: a.count() == b.count() == 2)
        await eventually(lambda: a.count() == 1)


async def test_a_replica_that_dies_stops_counting_once_its_heartbeats_lapse(
    nc: Client, nats_url: str, nats_prefix: str
) -> None:
    liveness = 0.9
    lost = await nats.connect(nats_url)
    try:
        async with replica(nc, nats_prefix, liveness) as a, replica(lost, nats_prefix, liveness):
            await eventually(lambda: a.count() == 2)
            # Its connection gone, the other can neither heartbeat nor withdraw its key.
            await lost.close()
            await eventually(lambda: a.count() == 1)
    finally:
        await lost.close()


async def test_a_replica_whose_own_heartbeats_stop_arriving_keeps_its_last_count(
    nc: Client, nats_prefix: str
) -> None:
    """Not hearing itself means not hearing anyone: it does not take the whole rate."""
    clock = Clock()
    async with (
        replica(nc, nats_prefix, 60.0, clock) as a,
        replica(nc, nats_prefix, 60.0, clock) as b,
    ):
        await eventually(lambda: a.count() == b.count() == 2)
        clock.now += 61
        assert a.count() == b.count() == 2


async def test_a_replica_whose_watch_ended_reads_the_bucket_afresh(
    nc: Client, nats_prefix: str
) -> None:
    liveness = 1.5
    async with replica(nc, nats_prefix, liveness) as a, replica(nc, nats_prefix, liveness) as b:
        await eventually(lambda: a.count() == b.count() == 2)
        # The watch ends (as a broken one would): a hears nobody, itself included.
        await cancel_task(a._follower)
        async with replica(nc, nats_prefix, liveness) as c:
            await eventually(lambda: c.count() == 3)
            # Missing its own heartbeats, a follows the bucket again, and finds c.
            await eventually(lambda: a.count() == 3)
