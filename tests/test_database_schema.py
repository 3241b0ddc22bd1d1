"""GENMESH_DATABASE_SCHEMA is used as written: a name with capitals (or a quote) is the schema
the service creates and then works in, not a lower-cased one that does not exist."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.db import open_database
from services.router.store import jobs, metadata
from tests.infra import unique


@pytest.fixture(params=["Router_", 'we"ird-'])
async def schema(request: pytest.FixtureRequest, postgres_url: str | None) -> AsyncIterator[str]:
    if postgres_url is None:
        pytest.skip("no PostgreSQL: set GENMESH_TEST_POSTGRES_URL, run one on 5432 or Docker")
    name = unique(request.param)
    yield name
    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            quoted = name.replace('"', '""')
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{quoted}" CASCADE'))
    finally:
        await engine.dispose()


async def test_a_schema_name_is_taken_as_written(postgres_url: str, schema: str) -> None:
    async with open_database(postgres_url, metadata, schema) as db, db.connect() as conn:
        assert (await conn.execute(select(jobs.c.id))).all() == []
        made = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        )
        assert set(made.scalars()) == set(metadata.tables)
