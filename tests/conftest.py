"""Shared fixtures: every test gets its own NATS prefix and its own database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.js.api import StreamConfig
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.infra import (
    env_nats_url,
    postgres_server,
    private_nats_server,
    reserved_port,
    unique,
)

# Fixtures of fakes more than one test package uses.
pytest_plugins = ["tests.fakes.object_store"]

ANCHOR_STREAM = "GENMESH_TEST_ANCHOR"


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The local NATS (JetStream) server, or a private one started from the package."""
    url = env_nats_url()
    if url:
        asyncio.run(_anchor(url))
        yield url
        return
    with private_nats_server() as url:
        asyncio.run(_anchor(url))
        yield url


async def _anchor(url: str) -> None:
    # nats-server 2.9 removes its streams directory when the last stream is deleted, and a
    # stream created at that moment fails ("error creating store for stream", 10049). Test
    # workers running side by side delete and create streams all the time; one stream that
    # is never deleted keeps the directory.
    nc = await nats.connect(url)
    try:
        config = StreamConfig(name=ANCHOR_STREAM, subjects=[ANCHOR_STREAM.lower()], max_bytes=4096)
        with contextlib.suppress(nats.js.errors.BadRequestError):  # made by another worker
            await nc.jetstream().add_stream(config)
    finally:
        await nc.close()


@pytest.fixture
async def nats_prefix(nats_url: str) -> AsyncIterator[str]:
    """A prefix no other test uses; its streams and buckets are deleted afterwards."""
    prefix = unique("t")
    yield prefix
    tag = prefix.upper()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((f"{tag}_", f"KV_{tag}_")):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port held for the test (tests.infra.reserved_port, any server may listen
    on it), so a server of the test can stop and come back where its clients look."""
    with reserved_port(any_server=True) as port:
        yield port


@dataclass(frozen=True)
class Database:
    url: str
    schema: str  # PostgreSQL schema ("" for SQLite)
    kind: str  # "sqlite" | "postgres"

    def env(self) -> dict[str, str]:
        """The GENMESH_* settings that point a service at this database."""
        return {"GENMESH_DATABASE_URL": self.url, "GENMESH_DATABASE_SCHEMA": self.schema}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield Database(f"sqlite:///{tmp_path / 'test.db'}", "", "sqlite")
        return
    # Asked for here only: a SQLite run needs no PostgreSQL found or started.
    url: str | None = request.getfixturevalue("postgres_url")
    if url is None:
        pytest.skip("no PostgreSQL: set GENMESH_TEST_POSTGRES_URL, run one on 5432 or Docker")
    schema = unique("t_")
    yield Database(url, schema, "postgres")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()
