"""A real AssetService, for the worker's storage calls, and what a worker's provider
instances share, for tests that never reach storage."""

from collections.abc import AsyncIterator

import nats
import pytest

from services.common.bus import Bus
from services.common.channels import mesh_channel
from services.providers.cancelled import CancelledJobs
from services.providers.runtime import Shared
from services.storage.client import AssetClient
from tests.storage.conftest import storage  # noqa: F401  (a fixture)


@pytest.fixture
async def shared(nats_url: str, nats_prefix: str) -> AsyncIterator[Shared]:
    """On real JetStream; storage is an address where nothing answers, never called."""
    nc = await nats.connect(nats_url)
    channel = mesh_channel("127.0.0.1:1")
    try:
        js = nc.jetstream()
        bus = Bus(nats_prefix, 1)
        await bus.ensure_streams(js)
        yield Shared(
            nc=nc,
            js=js,
            bus=bus,
            assets=AssetClient(channel),
            cancelled=CancelledJobs(await bus.cancellations_kv(js)),
            requests=await bus.requests_kv(js),
            worker_id="worker-1",
        )
    finally:
        await channel.close()
        await nc.close()
