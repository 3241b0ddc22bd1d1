"""ListJobs' top-level listing on SQLite and PostgreSQL: only pipelines and jobs of their own,
a full page each time, with their steps' jobs taking no place; it reads its partial index."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite

from genmesh.v1 import job_pb2
from services.common.db import Database as Db
from services.common.db import open_database
from services.router.store import JobStore, listing_query, metadata
from tests.conftest import Database
from tests.router.helpers import IMAGE, add_job, add_pipeline

VIDEO = job_pb2.TASK_IMAGE_TO_VIDEO
DONE = job_pb2.JOB_STATE_COMPLETED


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[Db]:
    async with open_database(database.url, metadata, database.schema) as opened:
        yield opened


@pytest.fixture
def store(engine: Db) -> JobStore:
    return JobStore(engine)


async def pages(store: JobStore, size: int, **filters: object) -> list[list[str]]:
    """Every page of the tenant's listing, each as its jobs' ids."""
    found: list[list[str]] = []
    token = ""
    while True:
        page = await store.list_jobs("t", page_size=size, page_token=token, **filters)  # type: ignore[arg-type]
        found.append([job.id for job in page.jobs])
        token = page.next_token
        if not token:
            return found


async def test_top_level_pages_are_full_and_hold_no_step(store: JobStore) -> None:
    # Newest first: j_5, p_b (its steps newer), j_3, j_2, p_a (its steps newer), j_0.
    await add_job(store, "j_0", 100.0)
    steps_a = await add_pipeline(store, "p_a", 101.0, [IMAGE, VIDEO])
    await add_job(store, "j_2", 102.0, state=DONE)
    await add_job(store, "j_3", 103.0)
    steps_b = await add_pipeline(store, "p_b", 104.0, [IMAGE, VIDEO, IMAGE])
    await add_job(store, "j_5", 105.0, state=DONE)
    # A job of another tenant, and another's step, are never the caller's.
    await add_job(store, "o_0", 106.0, tenant="other")
    await add_job(store, "o_1", 106.5, parent="o_0", tenant="other")

    top = [["j_5", "p_b"], ["j_3", "j_2"], ["p_a", "j_0"]]
    assert await pages(store, 2, top_level_only=True) == top
    # Without it, every job is listed as before: steps take places in the pages.
    every = await pages(store, 2)
    assert [job for page in every for job in page] == [
        "j_5",
        *reversed(steps_b),
        "p_b",
        "j_3",
        "j_2",
        *reversed(steps_a),
        "p_a",
        "j_0",
    ]
    assert len(every) == 6
    # It narrows the other filters too: a pipeline has no task, so none is listed by one.
    assert await pages(store, 50, top_level_only=True, states=[DONE]) == [
        ["j_5", "p_b", "j_2", "p_a"]
    ]
    assert await pages(store, 50, top_level_only=True, task=IMAGE) == [["j_5", "j_3", "j_2", "j_0"]]
    assert await pages(store, 50, top_level_only=True, task=VIDEO) == [[]]


async def test_the_top_level_listing_reads_its_partial_index(
    store: JobStore, engine: Db, database: Database
) -> None:
    # Enough steps that reading them would cost the planner more than skipping them.
    for n in range(40):
        await add_pipeline(store, f"p_{n:02}", 100.0 + n, [IMAGE, VIDEO, IMAGE])
    after = (120.0, "p_20")
    query = listing_query("t", top_level_only=True, after=after).limit(5)
    if database.kind == "sqlite":
        compiled = query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
        explain = f"EXPLAIN QUERY PLAN {compiled}"
    else:
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        compiled = query.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        explain = f"EXPLAIN {compiled}"
    async with engine.begin() as conn:
        if database.kind == "postgres":
            # The table is small: without this PostgreSQL reads it whole, whatever the index.
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            await conn.execute(text("ANALYZE jobs"))
        plan = "\n".join(str(row[-1]) for row in await conn.execute(text(explain)))
    assert "jobs_top_level_listing" in plan, plan
    # No sort: the index gives the listing's order.
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
