"""Replicas of a service started together on one fresh PostgreSQL schema all come up: the
first creates the schema and tables, the others wait for it instead of failing."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from services.common.db import open_database
from services.router.store import jobs, metadata
from tests.conftest import Database

REPLICAS = 6


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_replicas_starting_at_once_create_the_schema_once(database: Database) -> None:
    async def start() -> int:
        opened = open_database(database.url, metadata, database.schema)
        async with opened as db, db.connect() as conn:
            return len((await conn.execute(select(jobs.c.id))).all())

    assert await asyncio.gather(*(start() for _ in range(REPLICAS))) == [0] * REPLICAS
