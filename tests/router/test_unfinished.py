"""The store's scan of unfinished jobs reads every one, a page at a time, oldest first, once
each: the hedger rebuilds its watch list and routers adopt pipelines from it, so a job left
past the first page would go unwatched or undriven."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.router.store import Incoming, JobStore
from tests.router.helpers import World


async def store_job(store: JobStore, job_id: str, created: float, *, pipeline: bool) -> None:
    job = job_pb2.Job(id=job_id, tenant_id="t", state=job_pb2.JOB_STATE_QUEUED, last_sequence=1)
    if not pipeline:
        job.spec.task = job_pb2.TASK_TEXT_TO_IMAGE
        job.provider = "a"
    job.create_time.FromNanoseconds(int(created * 1e9))
    first = job_pb2.JobEvent(job_id=job_id, sequence=1, state=job_pb2.JOB_STATE_QUEUED)
    await store.create(job, "hash", first, dispatched=pipeline)


async def finish(store: JobStore, job_id: str) -> None:
    done = job_pb2.JobEvent(job_id=job_id, state=job_pb2.JOB_STATE_CANCELLED)
    assert await store.apply([Incoming(job_id, done)])


async def test_every_unfinished_job_across_pages_oldest_first(world: World) -> None:
    store = world.store
    # Several jobs share a create time, so the page boundary falls inside a tie.
    times = [100.0, 100.0, 100.0, 101.0, 102.0, 102.0, 103.0, 104.0, 104.0, 105.0, 106.0]
    for n, created in enumerate(times):
        await store_job(store, f"j_{n:02}", created, pipeline=n % 2 == 0)
    for ended in ("j_01", "j_04", "j_07"):
        await finish(store, ended)

    unfinished = [job.id async for job in store.unfinished(page=3)]
    assert unfinished == [f"j_{n:02}" for n in (0, 2, 3, 5, 6, 8, 9, 10)]

    pipelines = [job.id async for job in store.unfinished(pipelines=True, page=2)]
    assert pipelines == ["j_00", "j_02", "j_06", "j_08", "j_10"]

    # Exactly full pages end with an empty read, not a repeat.
    assert [job.id async for job in store.unfinished(pipelines=True, page=5)] == pipelines
