"""The router's estimate of each provider's JetStream queue, against a real JetStream."""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from services.common.bus import Bus
from services.router.queues import QueueDepths


async def test_a_job_published_during_a_read_is_not_counted_twice_for_long(
    nats_url: str, nats_prefix: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        bus = Bus(nats_prefix, 1)
        await bus.ensure_streams(js)
        await js.add_consumer(
            bus.jobs_stream,
            ConsumerConfig(
                durable_name=bus.worker_consumer("p"),
                filter_subject=bus.jobs_subject("p"),
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
        # Reads are an hour apart unless something makes one needed.
        depths = QueueDepths(js, bus, refresh=3600)
        assert await depths.depth("p") == 0
        await js.publish(bus.jobs_subject("p"), b"job")
        # The read already counts the job, whose publish is acknowledged only during it.
        reading = depths._refresh_soon("p")
        await asyncio.sleep(0)  # the read has asked JetStream
        depths.count_in("p", "j_1")
        await reading
        # Counted twice by that read (the safe side), then read again rather than kept.
        assert await depths.depth("p") == 1
        await depths.stop()
    finally:
        await nc.close()
