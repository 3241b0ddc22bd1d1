"""Builds a running worker from settings: adapters, consumers, registration, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from services.common.bus import Bus, connect
from services.common.cancelling import cancel_tasks
from services.common.channels import mesh_channel
from services.common.grpc_server import grpc_server
from services.providers.cancelled import CancelledJobs
from services.providers.config import ProviderConfig, load_catalog
from services.providers.drafts import Drafts
from services.providers.handback import handed_back
from services.providers.liveness import answer_liveness
from services.providers.registration import Registration
from services.providers.registry import MissingDependency, auto_instances, build_adapter
from services.providers.runtime import ProviderWorker, Shared, WorkerOptions, listen_for_cancels
from services.providers.settings import Settings
from services.storage.client import AssetClient

log = logging.getLogger(__name__)

# Seconds one storage call, or one step of a streamed upload or download, may take.
STORAGE_STEP_TIMEOUT = 30.0


@dataclass
class Worker:
    worker_id: str
    workers: list[ProviderWorker]


@asynccontextmanager
async def running_worker(
    settings: Settings, env: Mapping[str, str] | None = None
) -> AsyncIterator[Worker]:
    """Serve the configured providers; on exit, stop fetching, drain, then withdraw.

    Provider keys are read from `env` (the process environment when None)."""
    env = os.environ if env is None else env
    catalog = load_catalog(Path(settings.providers_file) if settings.providers_file else None, env)
    names = [n.strip() for n in settings.worker_providers.split(",") if n.strip()]
    auto = names == ["auto"]
    adapters = []
    for name in auto_instances(catalog) if auto else names:
        try:
            adapters.append(build_adapter(name, catalog))
        except MissingDependency as exc:
            if not auto:
                raise
            # "auto" serves what it can: one family's missing package must not stop the rest.
            log.warning("not serving %s", exc)
    names = [adapter.name for adapter in adapters]
    # Checked before anything connects, like the rest of the catalog.
    drafts = [Drafts.for_instance(adapter, catalog.get(adapter.name)) for adapter in adapters]
    bus = Bus(settings.nats_prefix, settings.nats_replicas)
    worker_id = uuid.uuid4().hex[:12]
    options = WorkerOptions(
        concurrency=settings.worker_concurrency,
        ack_wait=settings.worker_ack_wait,
        max_deliver=settings.worker_max_deliver,
        drain_timeout=settings.worker_drain_timeout,
        event_linger=settings.worker_event_linger,
        progress_linger=settings.worker_progress_linger,
    )
    async with AsyncExitStack() as stack:
        for adapter, draft in zip(adapters, drafts, strict=True):
            stack.push_async_callback(adapter.aclose)
            stack.push_async_callback(draft.aclose)
        nc = await stack.enter_async_context(
            connect(settings.nats_url, f"genmesh-worker-{worker_id}")
        )
        js = nc.jetstream()
        await bus.ensure_streams(js)
        channel = await stack.enter_async_context(mesh_channel(settings.storage_addr))
        cancelled = CancelledJobs(await bus.cancellations_kv(js))
        await cancelled.start()
        stack.push_async_callback(cancelled.stop)
        shared = Shared(
            nc=nc,
            js=js,
            bus=bus,
            # Each call (and each step of a stream) bounded, so a storage that hangs is
            # retried like one that is down (services.providers.storage_calls).
            assets=AssetClient(channel, timeout=STORAGE_STEP_TIMEOUT),
            cancelled=cancelled,
            requests=await bus.requests_kv(js),
            worker_id=worker_id,
        )
        workers = []
        for adapter, draft in zip(adapters, drafts, strict=True):
            config = catalog.get(adapter.name)
            workers.append(ProviderWorker(adapter, shared, _for_instance(options, config), draft))
        # Each instance's consumer exists before the worker says it is live.
        await asyncio.gather(*(w.open() for w in workers))
        registration = Registration(await bus.providers_kv(js), workers, worker_id)
        await registration.announce()
        stack.push_async_callback(registration.withdraw)
        cancel_sub = await listen_for_cancels(nc, bus, workers, cancelled)
        stack.push_async_callback(cancel_sub.unsubscribe)
        # Answers until the running jobs are drained: a router must not take a stopping
        # worker for a lost one while it finishes them.
        liveness = await answer_liveness(nc, bus, worker_id, workers)
        stack.push_async_callback(liveness.unsubscribe)
        background = [asyncio.create_task(registration.run())]
        fetchers = [asyncio.create_task(w.run()) for w in workers]

        async def shutdown() -> None:
            for worker in workers:
                worker.stop_fetching()
            await asyncio.wait(fetchers, timeout=2.0)
            await cancel_tasks(fetchers + background)
            await asyncio.gather(*(w.drain() for w in workers))
            if handed := [job_id for worker in workers for job_id in worker.handed_back]:
                log.warning("%s", handed_back(handed))

        stack.push_async_callback(shutdown)
        if settings.listen:
            await stack.enter_async_context(grpc_server(settings.listen, []))
        log.info("worker %s serving %s", worker_id, ", ".join(names))
        yield Worker(worker_id, workers)
        log.info("worker %s stopping", worker_id)


def _for_instance(options: WorkerOptions, config: ProviderConfig | None) -> WorkerOptions:
    """The worker's options with the instance's own limits (concurrency, retries, attempt
    timeout), where it sets them."""
    if config is None:
        return options
    if config.concurrency > 0:
        options = dataclasses.replace(
            options, concurrency=min(options.concurrency, config.concurrency)
        )
    if config.max_retries is not None:
        options = dataclasses.replace(options, max_deliver=config.max_retries + 1)
    return dataclasses.replace(options, attempt_timeout=config.attempt_timeout)
