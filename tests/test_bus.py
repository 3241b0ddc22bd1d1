"""Streams and buckets set up against real NATS: a JetStream that does not answer yet, and
buckets made by an earlier start with other settings, which take the settings of the service
starting now (a changed GENMESH_PIPELINE_LEASE or GENMESH_ROUTER_LIVENESS), as the streams do:
a TTL kept from before would go on expiring keys that are renewed on the new schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from pydantic import ValidationError

from services.common.bus import Bus, PrefixTaken
from services.common.settings import BusSettings
from services.router.pipelines.leases import Leases
from tests.infra import private_nats, start_failure, unique


async def test_streams_wait_for_jetstream_to_answer(tmp_path: Path) -> None:
    with private_nats(tmp_path / "nats") as server:
        await server.start()
        nc = await nats.connect(server.url)
        try:
            server.stall()
            bus = Bus(unique("w"), 1)
            # Each JetStream request gives up after a second here (5 s by default).
            creating = asyncio.create_task(bus.ensure_streams(nc.jetstream(timeout=1.0)))
            # Past one request's timeout, twice over: without the wait it has failed by now.
            await asyncio.sleep(2.5)
            assert not creating.done()

            server.resume()
            await asyncio.wait_for(creating, 30)
            info = await nc.jetstream().stream_info(bus.jobs_stream)
            assert info.config.name == bus.jobs_stream
        finally:
            server.resume()
            await nc.close()


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


async def test_a_prefix_spelled_like_another_meshs_does_not_take_its_streams(
    nc: Client, nats_prefix: str
) -> None:
    ours, theirs = Bus(f"{nats_prefix}-a"), Bus(f"{nats_prefix}_a")
    assert ours.jobs_stream == theirs.jobs_stream  # the names NATS allows cannot tell them apart
    js = nc.jetstream()
    await ours.ensure_streams(js)

    with pytest.raises(PrefixTaken, match="GENMESH_NATS_PREFIX of its own"):
        await theirs.ensure_streams(js)

    info = await js.stream_info(ours.jobs_stream)
    assert info.config.subjects == [f"{nats_prefix}-a.jobs.>"]


def test_a_prefix_that_cannot_name_a_stream_is_refused() -> None:
    for wrong in ("my mesh", "team.*", "team..a", ".team"):
        with pytest.raises(ValidationError, match="nats_prefix"):
            BusSettings.from_env({"GENMESH_NATS_PREFIX": wrong})
    # Dotted prefixes have always worked: their dots become "_" in stream names.
    assert BusSettings.from_env({"GENMESH_NATS_PREFIX": "team.gen-mesh_2"}).nats_prefix


async def test_a_router_whose_streams_another_mesh_has_says_so_and_exits(
    nc: Client, nats_url: str, nats_prefix: str, tmp_path: Path
) -> None:
    await Bus(f"{nats_prefix}-a").ensure_streams(nc.jetstream())
    said = await asyncio.to_thread(
        start_failure,
        "services.router",
        {
            "GENMESH_NATS_URL": nats_url,
            "GENMESH_NATS_PREFIX": f"{nats_prefix}_a",
            "GENMESH_DATA_DIR": str(tmp_path),
        },
    )
    assert "cannot start: NATS stream" in said
    assert "GENMESH_NATS_PREFIX of its own" in said
    assert "Traceback" not in said
