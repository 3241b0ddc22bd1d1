"""Builds a running router from settings: store, bus, catalog, recorder and gRPC server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from genmesh.v1 import (
    asset_service_pb2_grpc,
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    prompt_service_pb2_grpc,
    provider_service_pb2,
    provider_service_pb2_grpc,
)
from services.common.bus import Bus, connect
from services.common.cancelling import cancel_task
from services.common.channels import mesh_channel
from services.common.db import database_url, open_database
from services.common.grpc_server import RunningServer, grpc_server
from services.router.admission import AdmissionGate
from services.router.batches import Batches
from services.router.breakers import Breakers
from services.router.catalog import Catalog
from services.router.core import RouterCore
from services.router.dispatch import Dispatcher
from services.router.fallback import Fallback
from services.router.feed import FeedHub
from services.router.hedging import Hedger
from services.router.lost_workers import LostWorkers
from services.router.pipelines.app import start_pipelines
from services.router.queues import QueueDepths
from services.router.recorder import Recorder
from services.router.replicas import Replicas
from services.router.selection import (
    LatencyTracker,
    SelectionConfig,
    Selector,
    parse_policy,
    parse_priority,
    parse_weights,
)
from services.router.servicers import GenerateServicer, JobServicer, ProviderServicer
from services.router.settings import Settings
from services.router.stopping import WorkerStopper
from services.router.store import JobStore, metadata
from services.router.sweeper import DeadlineSweeper
from services.router.watch import RECHECK, WatchHub

log = logging.getLogger(__name__)


@dataclass
class Router:
    core: RouterCore
    server: RunningServer
    store: JobStore
    admission: AdmissionGate
    replicas: Replicas
    lost: LostWorkers


@asynccontextmanager
async def running_router(settings: Settings) -> AsyncIterator[Router]:
    """Start everything the router needs; on exit stop it in reverse order."""
    bus = Bus(settings.nats_prefix, settings.nats_replicas)
    async with AsyncExitStack() as stack:
        url = database_url(settings.database_url, settings.data_dir, "router.db")
        engine = await stack.enter_async_context(
            open_database(url, metadata, settings.database_schema, sole=True)
        )
        store = JobStore(engine)
        nc = await stack.enter_async_context(connect(settings.nats_url, "genmesh-router"))
        js = nc.jetstream()
        await bus.ensure_streams(js)
        catalog = Catalog(
            await bus.providers_kv(js),
            settings.provider_liveness,
            settings.provider_retention,
        )
        await catalog.start()
        stack.push_async_callback(catalog.stop)
        # Its own connection, without echo: the server never sends a hub its own events.
        hub_nc = await stack.enter_async_context(
            connect(settings.nats_url, "genmesh-router-watch", no_echo=True)
        )
        hub = WatchHub(hub_nc, bus)
        await hub.start()
        stack.push_async_callback(hub.stop)
        feeds = FeedHub(hub, engine)
        await feeds.start()
        stack.push_async_callback(feeds.stop)
        dispatcher = Dispatcher(js, bus, store, connected=lambda: nc.is_connected)
        queues = QueueDepths(js, bus)
        stack.push_async_callback(queues.stop)
        # Rate limits are shared among the replicas alive; this one withdraws after its gate
        # has stopped sending.
        replicas = Replicas(
            await bus.routers_kv(js, settings.router_liveness), settings.router_liveness
        )
        await replicas.start()
        stack.push_async_callback(replicas.stop)
        admission = admission_gate(settings, dispatcher, queues, catalog, store, replicas)
        # Jobs a dead router stored but never dispatched go back through the gate.
        await dispatcher.start(admission.admit)
        stack.push_async_callback(dispatcher.stop)
        replicas.on_departure(lambda _name: dispatcher.take_over_pending())
        await admission.start()
        stack.push_async_callback(admission.stop)

        prompt_channel = await stack.enter_async_context(mesh_channel(settings.prompt_addr))
        storage_channel = await stack.enter_async_context(mesh_channel(settings.storage_addr))
        breakers = Breakers(settings.circuit_failures, settings.circuit_cooldown)
        latency = LatencyTracker()
        selector = Selector(catalog.providers, selection_config(settings), breakers, latency)
        fallback = Fallback(selector, breakers, latency, admission)
        stopper = WorkerStopper(nc, bus, await bus.cancellations_kv(js))
        stack.push_async_callback(stopper.close)
        hedger = Hedger(store, fallback, hub, stopper.stop, settings.hedge_after)
        replicas.on_departure(lambda _name: hedger.take_over())
        core = RouterCore(
            store=store,
            catalog=catalog,
            hub=hub,
            stopper=stopper,
            prompts=prompt_service_pb2_grpc.PromptServiceStub(prompt_channel),
            prompt_max_length=settings.prompt_max_length,
            assets=asset_service_pb2_grpc.AssetServiceStub(storage_channel),
            selector=selector,
            breakers=breakers,
            hedger=hedger,
            admission=admission,
        )
        batches = Batches(core, store, hub)
        await start_pipelines(stack, core, settings, bus, js, store, hub)
        lost = LostWorkers(nc, bus, store, hub, settings.worker_lost_after, catalog.left)
        recorder = Recorder(
            nc, js, bus, store, hub, queues, fallback, hedger, lost, settings.recorder_ack_wait
        )
        sweeper = DeadlineSweeper(
            store, hub, stopper, fallback, queues, settings.deadline_sweep_interval
        )
        rechecks = hub.recheck_every(store.last_sequences, RECHECK)
        for loop in (recorder.run(), lost.run(), hedger.run(), sweeper.run(), rechecks):
            stack.push_async_callback(cancel_task, asyncio.create_task(loop))
        server = await stack.enter_async_context(
            grpc_server(
                settings.listen,
                [
                    (
                        generate_service_pb2_grpc.add_GenerateServiceServicer_to_server,
                        GenerateServicer(core, batches),
                        generate_service_pb2.DESCRIPTOR.services_by_name[
                            "GenerateService"
                        ].full_name,
                    ),
                    (
                        job_service_pb2_grpc.add_JobServiceServicer_to_server,
                        JobServicer(core, feeds, batches),
                        job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
                    ),
                    (
                        provider_service_pb2_grpc.add_ProviderServiceServicer_to_server,
                        ProviderServicer(core),
                        provider_service_pb2.DESCRIPTOR.services_by_name[
                            "ProviderService"
                        ].full_name,
                    ),
                ],
                grace=settings.shutdown_grace,
            )
        )
        log.info("router listening on %s", server.address)
        yield Router(core, server, store, admission, replicas, lost)
        log.info("router stopping")


def selection_config(settings: Settings) -> SelectionConfig:
    """The routing settings, parsed; a malformed one stops the router at start-up."""
    return SelectionConfig(
        default_policy=parse_policy(settings.routing_policy),
        priority=parse_priority(settings.routing_priority),
        weights=parse_weights(settings.routing_weights),
        max_attempts=settings.routing_max_attempts,
    )


def admission_gate(
    settings: Settings,
    dispatcher: Dispatcher,
    queues: QueueDepths,
    catalog: Catalog,
    store: JobStore,
    replicas: Replicas,
) -> AdmissionGate:
    """The gate between persisting and dispatching, with the providers' published limits."""

    def limits_of(name: str) -> provider_service_pb2.ProviderLimits | None:
        provider = catalog.get(name)
        return provider.limits if provider is not None else None

    return AdmissionGate(
        dispatcher,
        queues,
        limits_of,
        store.mark_dispatched,
        store.unsent,
        dispatcher.unsent_count,
        replicas=replicas.count,
        backlog=settings.admission_backlog,
        aging=settings.priority_aging,
    )
