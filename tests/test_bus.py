"""NATS connection and stream set-up against a real cluster (see tests.infra.nats_cluster)."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import nats.js.errors

from services.common.bus import Bus, connect
from tests.infra import nats_cluster, unique


async def test_streams_wait_for_a_cluster_to_regain_its_quorum() -> None:
    with nats_cluster(3) as nodes:
        nc = await nats.connect(nodes[0].url)
        try:
            js = nc.jetstream()
            await asyncio.wait_for(Bus(unique("w"), 3).ensure_streams(js), 30)
            # Two nodes of three lost: no quorum, so JetStream cannot answer.
            nodes[1].kill()
            nodes[2].kill()
            bus = Bus(unique("w"), 1)
            creating = asyncio.create_task(bus.ensure_streams(js))
            await asyncio.sleep(8)
            assert not creating.done()

            nodes[1].start()
            await asyncio.wait_for(creating, 30)

            info = await js.stream_info(bus.jobs_stream)
            assert info.config.name == bus.jobs_stream
        finally:
            await nc.close()


async def test_a_comma_separated_url_reaches_any_live_server() -> None:
    with nats_cluster(3) as nodes:
        nodes[0].kill()
        nodes[1].kill()
        urls = ",".join(node.url for node in nodes)
        async with connect(urls, "test") as nc:
            assert nc.connected_url is not None
            assert nc.connected_url.port == nodes[2].port
