"""Limits and priorities through the whole mesh: a sandbox instance with concurrency 1 (or a
rate limit, or a queue bound) served by one worker, the router's gate (or the gates of
several router replicas) in front of it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import grpc
import pytest

from genmesh.v1 import job_pb2, job_service_pb2, provider_service_pb2
from services.common.errors import reason_of
from services.common.parameters import dict_to_struct
from services.router.app import Router, running_router
from services.router.settings import Settings as RouterSettings
from tests.conftest import Database
from tests.e2e.test_batches import submit_batch
from tests.e2e.test_job_flow import submit
from tests.e2e.test_resilience import state_of
from tests.infra import eventually, reserved_port
from tests.mesh import Mesh, running_mesh, start_process, stop_process, wait_serving

LOW, NORMAL, HIGH = job_pb2.PRIORITY_LOW, job_pb2.PRIORITY_NORMAL, job_pb2.PRIORITY_HIGH
QUEUED = job_pb2.JOB_STATE_QUEUED
PROCESSING = job_pb2.JOB_STATE_PROCESSING
COMPLETED = job_pb2.JOB_STATE_COMPLETED


@asynccontextmanager
async def limited_sandbox(
    nats_url: str,
    prefix: str,
    database: Database,
    data_dir: Path,
    limits: str = "concurrency = 1",
    *,
    backlog: int | None = 1,
    router_in_process: bool = True,
    router_liveness: float | None = None,
) -> AsyncIterator[Mesh]:
    """One worker serving a `sandbox` instance with the given catalog limits; the router
    holds jobs back once `backlog` wait in JetStream (None: its default)."""
    overrides = {} if backlog is None else {"GENMESH_ADMISSION_BACKLOG": str(backlog)}
    if router_liveness is not None:
        overrides["GENMESH_ROUTER_LIVENESS"] = str(router_liveness)
    async with running_mesh(
        nats_url=nats_url,
        prefix=prefix,
        database=database,
        data_dir=data_dir,
        catalog=f'[[providers]]\nname = "sandbox"\nfamily = "sandbox"\n{limits}\n',
        router_overrides=overrides,
        router_in_process=router_in_process,
    ) as mesh:
        yield mesh


@asynccontextmanager
async def busy_sandbox(
    nats_url: str,
    prefix: str,
    database: Database,
    data_dir: Path,
    max_queue: int,
    backlog: int | None = 1,
) -> AsyncIterator[tuple[Mesh, job_pb2.Job]]:
    """The sandbox with concurrency 1 and a queue bound, its slot taken by a job that runs
    until cancelled (yielded beside the mesh), and nothing waiting."""
    limits = f"concurrency = 1\nmax_queue = {max_queue}"
    async with limited_sandbox(
        nats_url, prefix, database, data_dir, limits, backlog=backlog
    ) as mesh:
        filler = await submit(mesh, image(latency_ms=600_000))
        await eventually(lambda: _is(mesh, filler.id, PROCESSING), within=15)
        await eventually(lambda: _queued(mesh, 0))
        yield mesh, filler


def rate_limited(
    nats_url: str,
    prefix: str,
    database: Database,
    data_dir: Path,
    rate: float,
    router_liveness: float | None = None,
) -> AbstractAsyncContextManager[Mesh]:
    """The sandbox limited to `rate` jobs a second and nothing else (the default backlog)."""
    return limited_sandbox(
        nats_url,
        prefix,
        database,
        data_dir,
        f"rate_per_second = {rate}",
        backlog=None,
        router_liveness=router_liveness,
    )


@asynccontextmanager
async def another_router(mesh: Mesh) -> AsyncIterator[tuple[Router, Mesh]]:
    """A second router replica, in-process, on the mesh's NATS and database; and the mesh as
    clients of that replica see it."""
    settings = RouterSettings.from_env({**mesh.env, "GENMESH_LISTEN": "127.0.0.1:0"})
    async with (
        running_router(settings) as router,
        grpc.aio.insecure_channel(router.server.address) as channel,
    ):
        yield router, Mesh(mesh.env, mesh.data_dir, channel, mesh.storage_channel, router=router)


@asynccontextmanager
async def router_process(mesh: Mesh) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """A second router replica as a process of its own, once the mesh's in-process router
    counts it; killed on the way out if the caller has not stopped it."""
    with reserved_port(any_server=True) as port:
        address = f"127.0.0.1:{port}"
        proc = start_process("services.router", {**mesh.env, "GENMESH_LISTEN": address})
        try:
            await wait_serving(address)
            await eventually(lambda: in_process(mesh).replicas.count() == 2)
            yield proc, address
        finally:
            await stop_process(proc, signal.SIGKILL)


def in_process(mesh: Mesh) -> Router:
    assert mesh.router is not None
    return mesh.router


def image(latency_ms: int = 0, priority: int = 0) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        priority=priority,  # type: ignore[arg-type]
        parameters=dict_to_struct(
            {"latency_ms": latency_ms, "steps": 1, "width": 32, "height": 32, "preview": False}
        ),
    )


async def finish(mesh: Mesh, jobs: list[job_pb2.Job]) -> dict[str, list[job_pb2.JobEvent]]:
    """Every job's events until it ends, by job id."""
    results = await asyncio.wait_for(asyncio.gather(*(mesh.watch(j.id) for j in jobs)), 120)
    return {j.id: events for j, events in zip(jobs, results, strict=True)}


def started(events: list[job_pb2.JobEvent]) -> float:
    """When the worker started the job (its first PROCESSING event), in seconds."""
    return next(e.time.ToNanoseconds() / 1e9 for e in events if e.state == PROCESSING)


def left_queue(events: list[job_pb2.JobEvent]) -> float:
    """When the job's first event after QUEUED happened, in seconds: after its dispatch."""
    return next(e.time.ToNanoseconds() / 1e9 for e in events if e.state != QUEUED)


async def run_at_most(rate: float, meshes: list[Mesh], each: int) -> None:
    """Submit `each` quick jobs through each of `meshes` (router replicas) at once; all
    complete, and none leaves the queue sooner than a `rate`-per-second bucket of `rate`
    tokens, full at the first submit, allows: the k-th (from 1) no earlier than (k - rate) /
    rate seconds after it. (A bound on how many go, so slowness cannot break it.)"""
    before = time.time()
    jobs = await asyncio.gather(*(submit(m, image()) for _ in range(each) for m in meshes))
    results = await finish(meshes[0], list(jobs))
    assert all(events[-1].state == COMPLETED for events in results.values())
    starts = sorted(left_queue(events) for events in results.values())
    for k, start in enumerate(starts, 1):
        assert start - before >= (k - rate) / rate - 0.01, (k, start - before)


async def sandbox(mesh: Mesh) -> provider_service_pb2.Provider:
    reply = await mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
    return next(p for p in reply.providers if p.name == "sandbox")


async def job_count(mesh: Mesh) -> int:
    reply = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=100))
    return len(reply.jobs)


async def fill_then_low_then_high(
    mesh: Mesh,
) -> tuple[list[job_pb2.Job], list[job_pb2.Job], list[job_pb2.Job]]:
    """Occupy the single slot and the queue until release(), then submit four low and four
    high jobs: (fillers, lows, highs)."""
    # Held until released, however slowly the jobs after them are submitted: a filler
    # that ended on its own while the lows were going in would let a low through first.
    fillers = [await submit(mesh, image(latency_ms=600_000)) for _ in range(3)]
    await eventually(lambda: _is(mesh, fillers[0].id, PROCESSING), within=15)
    lows = [await submit(mesh, image(latency_ms=100, priority=LOW)) for _ in range(4)]
    highs = [await submit(mesh, image(latency_ms=100, priority=HIGH)) for _ in range(4)]
    return fillers, lows, highs


async def release(mesh: Mesh, fillers: list[job_pb2.Job]) -> None:
    """Cancel the fillers, freeing the slot and the queue for the held jobs."""
    for job in fillers:
        await mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id))


def assert_highs_first(
    results: dict[str, list[job_pb2.JobEvent]], lows: list[job_pb2.Job], highs: list[job_pb2.Job]
) -> None:
    assert all(events[-1].state == COMPLETED for events in results.values())
    high_starts = [started(results[j.id]) for j in highs]
    low_starts = [started(results[j.id]) for j in lows]
    # Submitted later, started earlier: every high-priority job before every low one.
    assert max(high_starts) < min(low_starts)
    # FIFO within a class.
    assert high_starts == sorted(high_starts)
    assert low_starts == sorted(low_starts)


async def test_priority_order_under_load(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with limited_sandbox(nats_url, nats_prefix, database, tmp_path) as mesh:
        fillers, lows, highs = await fill_then_low_then_high(mesh)
        # Held in the router, shown as queued for the instance.
        assert (await sandbox(mesh)).health.queued >= len(lows) + len(highs)
        await release(mesh, fillers)
        results = await finish(mesh, lows + highs)
    assert_highs_first(results, lows, highs)


async def test_rate_limited_jobs_queue_and_all_complete(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    rate = 4.0
    async with rate_limited(nats_url, nats_prefix, database, tmp_path, rate) as mesh:
        assert (await sandbox(mesh)).limits.rate_per_second == rate
        # Alone, the router has the whole rate.
        assert in_process(mesh).replicas.count() == 1
        assert in_process(mesh).admission.rate("sandbox") == rate
        # The bucket holds `rate` tokens and earns `rate` a second.
        await run_at_most(rate, [mesh], 12)


# Replicas share one database: PostgreSQL (a SQLite file takes one router).
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_router_replicas_share_the_rate_limit(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    """Two replicas each send half the rate (each alone would send all of it, the two
    together twice); once one stops, the other has the whole rate again."""
    rate = 4.0
    # Far longer than the test waits: only the stopped replica's withdrawal counts.
    async with rate_limited(nats_url, nats_prefix, database, tmp_path, rate, 120.0) as mesh:
        first = in_process(mesh)
        async with another_router(mesh) as (second, via_second):
            await eventually(lambda: first.replicas.count() == second.replicas.count() == 2)
            assert first.admission.rate("sandbox") == second.admission.rate("sandbox") == rate / 2
            # Buckets of half the rate holding a second of it each: together, the rate.
            await run_at_most(rate, [mesh, via_second], 12)

        await eventually(lambda: first.replicas.count() == 1)
        assert first.admission.rate("sandbox") == rate
        await run_at_most(rate, [mesh], 8)


# Replicas share one database: PostgreSQL (a SQLite file takes one router).
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_killed_router_replica_stops_counting_when_its_heartbeats_lapse(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    rate, liveness = 4.0, 1.5
    async with rate_limited(nats_url, nats_prefix, database, tmp_path, rate, liveness) as mesh:
        first = in_process(mesh)
        async with router_process(mesh) as (proc, _):
            assert first.admission.rate("sandbox") == rate / 2
            await stop_process(proc, signal.SIGKILL)
            await eventually(lambda: first.replicas.count() == 1, within=liveness + 10)
            assert first.admission.rate("sandbox") == rate


async def test_resource_exhausted_at_the_queue_bound_writes_nothing(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with limited_sandbox(
        nats_url, nats_prefix, database, tmp_path, "concurrency = 1\nmax_queue = 3"
    ) as mesh:
        limits = (await sandbox(mesh)).limits
        assert (limits.concurrency, limits.max_queue) == (1, 3)
        running = await submit(mesh, image(latency_ms=4000))
        await eventually(lambda: _is(mesh, running.id, PROCESSING), within=15)
        await eventually(lambda: _queued(mesh, 0))
        # One waits in JetStream, two in the router: the bound is reached.
        waiting = [await submit(mesh, image()) for _ in range(3)]
        assert (await sandbox(mesh)).health.queued == 3
        count = await job_count(mesh)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await submit(mesh, image(priority=HIGH))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Not too large, too soon: the bridge answers it 429, not 413.
        assert reason_of(refused.value) == ""
        details = refused.value.details() or ""
        assert "sandbox" in details and "max_queue = 3" in details and "retry later" in details
        assert await job_count(mesh) == count
        # A held job that is cancelled leaves the queue at once, and never runs.
        await mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=waiting[-1].id))
        assert (await sandbox(mesh)).health.queued == 2
        late = await submit(mesh, image())
        results = await finish(mesh, [running, *waiting, late])
    assert results[waiting[-1].id][-1].state == job_pb2.JOB_STATE_CANCELLED
    assert PROCESSING not in [e.state for e in results[waiting[-1].id]]
    for job in [running, *waiting[:-1], late]:
        assert results[job.id][-1].state == COMPLETED


async def test_a_batch_counts_its_own_jobs_toward_the_queue_bound(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with busy_sandbox(nats_url, nats_prefix, database, tmp_path, 3) as (mesh, running):
        count = await job_count(mesh)
        # Four jobs would wait where three may: the fourth spec passes the bound.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await submit_batch(mesh, [image()] * 4)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (refused.value.details() or "").startswith("specs[3]: provider sandbox has 3")
        assert await job_count(mesh) == count
        # Three fit, each behind the ones before it.
        batch = await submit_batch(mesh, [image()] * 3)
        assert [j.progress.queue_position for j in batch.jobs] == [0, 1, 2]
        await release(mesh, [*batch.jobs, running])


async def test_jobs_held_when_the_router_dies_all_complete_highs_first(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with limited_sandbox(
        nats_url, nats_prefix, database, tmp_path, router_in_process=False
    ) as mesh:
        fillers, lows, highs = await fill_then_low_then_high(mesh)
        await mesh.restart_router(signal.SIGKILL)
        await release(mesh, fillers)
        results = await finish(mesh, lows + highs)
    assert_highs_first(results, lows, highs)
    for events in results.values():
        assert [e.state for e in events].count(COMPLETED) == 1


async def _is(mesh: Mesh, job_id: str, state: int) -> bool:
    return await state_of(mesh, job_id) == state


async def _queued(mesh: Mesh, n: int) -> bool:
    return (await sandbox(mesh)).health.queued == n


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_jobs_held_by_a_replica_that_goes_are_sent_by_the_replica_left(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path, sig: int
) -> None:
    """Scaled down (or a replica lost and not replaced): the replica left takes over the
    jobs the gone one held back, without waiting for a router to start."""
    async with limited_sandbox(
        nats_url, nats_prefix, database, tmp_path, router_liveness=1.5
    ) as mesh:
        async with router_process(mesh) as (proc, address):
            async with grpc.aio.insecure_channel(address) as channel:
                second = Mesh(mesh.env, mesh.data_dir, channel, mesh.storage_channel)
                filler = await submit(second, image(latency_ms=600_000))
                await eventually(lambda: _is(mesh, filler.id, PROCESSING), within=15)
                await eventually(lambda: _queued(second, 0))
                # One waits in JetStream, the rest are held by the second replica.
                waiting = [await submit(second, image()) for _ in range(4)]
                assert (await sandbox(second)).health.queued == len(waiting)
            await stop_process(proc, sig)
        await release(mesh, [filler])
        results = await asyncio.wait_for(finish(mesh, waiting), 30)
    for events in results.values():
        assert [e.state for e in events].count(COMPLETED) == 1
        assert events[-1].state == COMPLETED


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_the_queue_bound_holds_for_the_mesh_across_router_replicas(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    bound = 3
    async with (
        limited_sandbox(
            nats_url, nats_prefix, database, tmp_path, f"concurrency = 1\nmax_queue = {bound}"
        ) as mesh,
        another_router(mesh) as (_, via_second),
    ):
        filler = await submit(mesh, image(latency_ms=600_000))
        await eventually(lambda: _is(mesh, filler.id, PROCESSING), within=15)
        await eventually(lambda: _queued(mesh, 0))
        replicas = [mesh, via_second]
        accepted: list[job_pb2.Job] = []
        refused: list[grpc.aio.AioRpcError] = []
        for k in range(2 * bound):
            # Past the replicas' queue-depth refresh, so each sees the other's sends.
            await asyncio.sleep(0.4)
            try:
                accepted.append(await submit(replicas[k % 2], image()))
            except grpc.aio.AioRpcError as exc:
                refused.append(exc)
        # One waits in JetStream, the others are held, some by each replica: together
        # no more than the bound, as with one replica.
        assert len(accepted) == bound
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        # The waiting jobs first: once the filler goes, they run at once and may be done
        # before their cancel comes, which is then refused.
        await release(mesh, [*accepted, filler])


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_queue_positions_and_health_count_jobs_every_replica_holds(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with (
        limited_sandbox(nats_url, nats_prefix, database, tmp_path) as mesh,
        another_router(mesh) as (_, via_second),
    ):
        filler = await submit(mesh, image(latency_ms=600_000))
        await eventually(lambda: _is(mesh, filler.id, PROCESSING), within=15)
        await eventually(lambda: _queued(mesh, 0))
        # One waits in JetStream (the backlog is one); the next two are held by the second
        # replica, which the first knows nothing of but from the store.
        waiting = [await submit(mesh, image())]
        await eventually(lambda: _queued(mesh, 1))
        for _ in range(2):
            waiting.append(await submit(via_second, image()))
        await eventually(lambda: _queued(mesh, 3))
        assert (await sandbox(via_second)).health.queued == 3
        # A job submitted to the first replica has all three ahead of it.
        last = await submit(mesh, image())
        assert last.progress.queue_position == 3, last.progress
        assert last.progress.message == "queued, position 4"
        await release(mesh, [filler])
        results = await finish(mesh, [*waiting, last])
        assert all(events[-1].state == COMPLETED for events in results.values())


async def test_a_held_job_that_ended_no_longer_counts_toward_the_queue_bound(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with busy_sandbox(nats_url, nats_prefix, database, tmp_path, 2) as (mesh, filler):
        queued = await submit(mesh, image())
        # Held (the JetStream queue has its one), until its deadline fails it.
        short = image()
        short.timeout.FromSeconds(1)
        expiring = await submit(mesh, short)
        await eventually(lambda: _is(mesh, expiring.id, job_pb2.JOB_STATE_FAILED), within=15)
        # One job waits, under the bound of two: accepted.
        late = await submit(mesh, image())
        await release(mesh, [late, queued, filler])


async def test_a_published_job_that_ended_before_it_started_leaves_the_queue(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    # The default backlog: both wait in JetStream, not in the router. Their messages counted
    # toward the bound until a worker took them, however long the running job took.
    async with busy_sandbox(nats_url, nats_prefix, database, tmp_path, 2, backlog=None) as (
        mesh,
        filler,
    ):
        short = image()
        short.timeout.FromSeconds(1)
        expiring = await submit(mesh, short)
        cancelled = await submit(mesh, image())
        assert (await sandbox(mesh)).health.queued == 2
        await mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=cancelled.id))
        await eventually(lambda: _is(mesh, expiring.id, job_pb2.JOB_STATE_FAILED), within=15)
        await eventually(lambda: _queued(mesh, 0))
        # Room for two again, while the filler still runs.
        later = [await submit(mesh, image()) for _ in range(2)]
        assert (await state_of(mesh, filler.id)) == PROCESSING
        await release(mesh, [filler])
        results = await finish(mesh, [expiring, cancelled, *later])
    for job in (expiring, cancelled):
        assert PROCESSING not in [e.state for e in results[job.id]]
    for job in later:
        assert results[job.id][-1].state == COMPLETED
