"""The worker's local copy of the cancellations bucket, against a real NATS KV bucket."""

from __future__ import annotations

import nats

from services.common.bus import Bus
from services.providers.cancelled import CancelledJobs
from tests.infra import eventually


async def test_cancellations_before_and_after_start_are_known(
    nats_url: str, nats_prefix: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        kv = await Bus(nats_prefix, 1).cancellations_kv(nc.jetstream())
        await kv.put("j_before", b"x")
        cancelled = CancelledJobs(kv)
        await cancelled.start()
        try:
            # Loaded before start() returns: a job fetched at once is already checked.
            assert "j_before" in cancelled
            assert "j_other" not in cancelled
            await kv.put("j_after", b"x")
            await eventually(lambda: "j_after" in cancelled)
            await kv.delete("j_before")
            await eventually(lambda: "j_before" not in cancelled)
            # A cancel heard on the broadcast counts before the bucket's update arrives.
            cancelled.add("j_broadcast")
            assert "j_broadcast" in cancelled
        finally:
            await cancelled.stop()
    finally:
        await nc.close()
