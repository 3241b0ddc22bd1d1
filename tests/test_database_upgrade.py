"""A database made by an earlier release gains the columns added since, keeping its rows."""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, String, Table, insert, select

from services.common.db import open_database
from tests.conftest import Database


def _jobs_table(metadata: MetaData, *, with_batch: bool) -> Table:
    columns = [Column("id", String(10), primary_key=True)]
    if with_batch:
        columns.append(Column("batch_id", String(40), nullable=True))
    table = Table("jobs_upgrade", metadata, *columns)
    if with_batch:
        Index("jobs_upgrade_batch", table.c.batch_id)
    return table


async def _insert(database: Database, table: Table, row: dict[str, str]) -> None:
    opened = open_database(database.url, table.metadata, database.schema)
    async with opened as engine, engine.begin() as conn:
        await conn.execute(insert(table), [row])


async def test_new_nullable_columns_are_added(database: Database) -> None:
    await _insert(database, _jobs_table(MetaData(), with_batch=False), {"id": "j1"})
    table = _jobs_table(MetaData(), with_batch=True)
    await _insert(database, table, {"id": "j2", "batch_id": "b1"})
    # A third start finds nothing left to add.
    opened = open_database(database.url, table.metadata, database.schema)
    async with opened as engine, engine.connect() as conn:
        rows = sorted((await conn.execute(select(table))).all())
    assert rows == [("j1", None), ("j2", "b1")]
