"""Fixtures shared by the router's tests: the store, selector, fallback and dispatcher on a
real database and JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest

from services.common.bus import Bus
from services.common.db import open_database
from services.router.breakers import Breakers
from services.router.dispatch import Dispatcher
from services.router.fallback import Fallback
from services.router.selection import LatencyTracker, SelectionConfig, Selector
from services.router.store import JobStore, metadata
from tests.conftest import Database
from tests.router.helpers import PROVIDERS, World


@pytest.fixture
async def world(nats_url: str, nats_prefix: str, database: Database) -> AsyncIterator[World]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        bus = Bus(nats_prefix, 1)
        await bus.ensure_streams(js)
        async with open_database(database.url, metadata, database.schema) as engine:
            store = JobStore(engine)
            breakers = Breakers(threshold=2, cooldown=30.0)
            latency = LatencyTracker()
            selector = Selector(
                lambda task: [p for p in PROVIDERS if not task or task in p.tasks],
                SelectionConfig(),
                breakers,
                latency,
            )
            dispatcher = Dispatcher(js, bus, store)
            yield World(
                store,
                dispatcher,
                Fallback(selector, breakers, latency, dispatcher),
                breakers,
                latency,
                js,
                bus,
            )
            await dispatcher.stop()
    finally:
        await nc.close()
