"""A KV bucket made by an earlier start takes the settings of the service starting now (a
changed GENMESH_PIPELINE_LEASE or GENMESH_ROUTER_LIVENESS), as the streams do: a TTL kept from
before would go on expiring keys that are renewed on the new schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from services.common.bus import Bus
from services.router.pipelines.leases import Leases


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def test_a_changed_lease_reaches_the_existing_bucket(nc: Client, nats_prefix: str) -> None:
    bus, js = Bus(nats_prefix), nc.jetstream()
    await bus.pipeline_leases_kv(js, 15.0)
    kv = await bus.pipeline_leases_kv(js, 60.0)
    status = await kv.status()
    assert status.ttl == 60.0
    # Shorter again, below the duplicate window the bucket was made with.
    kv = await bus.pipeline_leases_kv(js, 5.0)
    assert (await kv.status()).ttl == 5.0
    # Unchanged: used as it is.
    assert (await (await bus.pipeline_leases_kv(js, 5.0)).status()).ttl == 5.0


async def test_a_changed_liveness_reaches_the_existing_bucket(nc: Client, nats_prefix: str) -> None:
    bus, js = Bus(nats_prefix), nc.jetstream()
    await bus.routers_kv(js, 6.0)
    kv = await bus.routers_kv(js, 20.0)
    assert (await kv.status()).ttl == 20.0


async def test_a_pipeline_lease_lengthened_is_kept(nc: Client, nats_prefix: str) -> None:
    bus, js = Bus(nats_prefix), nc.jetstream()
    await bus.pipeline_leases_kv(js, 0.6)
    lease_time = 3.0
    leases = Leases(await bus.pipeline_leases_kv(js, lease_time), "router-a", lease_time)
    lease = await leases.claim("j_1")
    assert lease is not None
    # Renewed every second: under the bucket's old TTL the key lapsed first and the owner
    # lost the pipeline it was driving (to whichever router claimed it next).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lease.keep(), 2.5)
    assert await leases.claim("j_1") is None
