"""A database made by an earlier release gains the columns and indexes added since, keeping
its rows."""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, String, Table, insert, select, text, update

from services.common.db import open_database
from services.router import store
from tests.conftest import Database
from tests.router.helpers import IMAGE, add_job, add_pipeline


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


async def _indexes(database: Database, table: str) -> set[str]:
    """The names of `table`'s indexes, as the database's own catalog lists them."""
    if database.kind == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE schemaname = :s AND tablename = :t"
    opened = open_database(database.url, MetaData(), database.schema)
    async with opened as engine, engine.connect() as conn:
        found = await conn.execute(text(query), {"t": table, "s": database.schema})
        return set(found.scalars())


async def test_an_index_added_to_an_existing_table_is_created(database: Database) -> None:
    # batch_members as a release before its job index made it, with a row in it.
    old = Table(
        "batch_members",
        MetaData(),
        Column("batch_id", String(40), primary_key=True),
        Column("job_id", String(40), primary_key=True),
        Column("tenant_id", String(64), nullable=False),
    )
    await _insert(database, old, {"batch_id": "b1", "job_id": "j1", "tenant_id": "default"})
    assert "batch_members_job" not in await _indexes(database, "batch_members")

    for _start in range(2):  # the second start finds nothing left to make
        opened = open_database(database.url, store.metadata, database.schema)
        async with opened as engine, engine.connect() as conn:
            rows = (await conn.execute(select(store.batch_members))).all()
        assert rows == [("b1", "j1", "default")]
        assert "batch_members_job" in await _indexes(database, "batch_members")
    for table in store.metadata.sorted_tables:
        wanted = {index.name for index in table.indexes}
        assert wanted <= await _indexes(database, table.name), table.name


async def test_step_jobs_stored_before_parent_job_id_are_named_by_it(database: Database) -> None:
    async with open_database(database.url, store.metadata, database.schema) as engine:
        jobs = store.JobStore(engine)
        await add_job(jobs, "j_mine", 100.0, key="pipeline:mine:too")  # a caller's own key
        steps = await add_pipeline(jobs, "p_0", 101.0, [IMAGE, IMAGE])
        await add_job(jobs, "j_last", 102.0)
        # The table as the release before made it: no parent_job_id, nor its index.
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX jobs_top_level_listing"))
            await conn.execute(text("ALTER TABLE jobs DROP COLUMN parent_job_id"))

    for _start in range(2):  # the second start finds nothing left to fill in
        async with open_database(database.url, store.metadata, database.schema) as engine:
            async with engine.connect() as conn:
                query = select(store.jobs.c.id, store.jobs.c.parent_job_id)
                parents: dict[str, str | None] = dict((await conn.execute(query)).all())
            listed = await store.JobStore(engine).list_jobs("t", top_level_only=True)
        assert parents == {
            "j_last": None,
            "j_mine": None,
            "p_0": None,
            **dict.fromkeys(steps, "p_0"),
        }
        assert [job.id for job in listed.jobs] == ["j_last", "p_0", "j_mine"]


async def test_a_backfill_cut_short_is_done_at_the_next_start(database: Database) -> None:
    """SQLite commits ALTER TABLE by itself: a start that died during the backfill left the
    column there, and the steps' parents unnamed."""
    async with open_database(database.url, store.metadata, database.schema) as engine:
        jobs = store.JobStore(engine)
        steps = await add_pipeline(jobs, "p_0", 101.0, [IMAGE, IMAGE])
        # As that start left it: the column, never filled in, and no index after it.
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX jobs_top_level_listing"))
            await conn.execute(update(store.jobs).values(parent_job_id=None))
            # One body that cannot be read is left as it is, not a start that fails.
            await conn.execute(
                update(store.jobs).where(store.jobs.c.id == steps[0]).values(body=b"\xff\x00")
            )

    async with (
        open_database(database.url, store.metadata, database.schema) as engine,
        engine.connect() as conn,
    ):
        query = select(store.jobs.c.id, store.jobs.c.parent_job_id)
        parents: dict[str, str | None] = dict((await conn.execute(query)).all())
    assert parents == {"p_0": None, steps[0]: None, steps[1]: "p_0"}
    assert "jobs_top_level_listing" in await _indexes(database, "jobs")
