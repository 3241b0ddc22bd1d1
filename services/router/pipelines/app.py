"""Wiring pipelines into a running router."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

from nats.js import JetStreamContext

from services.common.bus import Bus
from services.router.core import RouterCore
from services.router.pipelines.leases import Leases
from services.router.pipelines.runner import Pipelines
from services.router.settings import Settings
from services.router.store import JobStore
from services.router.watch import WatchHub


async def start_pipelines(
    stack: AsyncExitStack,
    core: RouterCore,
    settings: Settings,
    bus: Bus,
    js: JetStreamContext,
    store: JobStore,
    hub: WatchHub,
) -> Pipelines:
    """Build the pipeline runner, attach it to `core`, resume unfinished pipelines; the stack
    stops it (releasing its leases) before the connections it uses close."""
    kv = await bus.pipeline_leases_kv(js, settings.pipeline_lease)
    leases = Leases(kv, f"router-{uuid.uuid4().hex[:12]}", settings.pipeline_lease)
    pipelines = Pipelines(
        core,
        store,
        hub,
        leases,
        prompt_max_length=settings.prompt_max_length,
        rescan=settings.pipeline_lease,
    )
    core.pipelines = pipelines
    await pipelines.start()
    stack.push_async_callback(pipelines.stop)
    return pipelines
