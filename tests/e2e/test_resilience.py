"""Processes die, restart and run many jobs at once; no job is lost or done twice."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from genmesh.v1 import asset_pb2, generate_service_pb2, job_pb2
from services.common.db import open_database
from services.common.parameters import dict_to_struct
from services.providers.app import running_worker
from services.providers.settings import Settings as WorkerSettings
from services.storage.app import running_storage
from services.storage.schema import assets, metadata
from services.storage.settings import Settings as StorageSettings
from tests.conftest import Database
from tests.infra import eventually
from tests.mesh import Mesh, running_mesh, start_process, stop_process


def spec(**params: object) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        parameters=dict_to_struct(params),
    )


async def submit(mesh: Mesh, s: job_pb2.JobSpec) -> job_pb2.Job:
    return (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=s))).job


async def state_of(mesh: Mesh, job_id: str) -> int:
    return (await mesh.get_job(job_id)).state


async def asset_rows(mesh: Mesh, job_id: str) -> dict[int, int]:
    """Rows in storage's assets table for the job, counted by role."""
    url = mesh.env["GENMESH_STORAGE_DATABASE_URL"]
    schema = mesh.env["GENMESH_DATABASE_SCHEMA"]
    async with open_database(url, metadata, schema) as engine, engine.connect() as conn:
        rows = await conn.execute(
            select(assets.c.role, func.count())
            .where(assets.c.job_id == job_id)
            .group_by(assets.c.role)
        )
        return {role: count for role, count in rows}


@pytest.mark.parametrize("noticed", [False, True], ids=["ack-wait", "lost-worker"])
async def test_worker_killed_mid_job_is_finished_by_another(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path, noticed: bool
) -> None:
    """Whether the router notices the worker gone (its jobs go on at once, their watchers
    told) or not (they go on after the ack wait), the job completes once."""
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        workers=0,
        router_overrides={"GENMESH_WORKER_LOST_AFTER": "1" if noticed else "0"},
    ) as mesh:
        # Noticed, an ack wait longer than the test may take: the job can only go on because
        # the router noticed. Else a short one, so the job is redelivered within the test.
        env = {**mesh.env, "GENMESH_WORKER_ACK_WAIT": "600" if noticed else "2"}
        first = start_process("services.providers", env)
        second = None
        try:
            await mesh.wait_for_provider()
            # Long enough to be still running once the second worker is up.
            job = await submit(mesh, spec(latency_ms=10_000, steps=8, width=64, height=64))

            async def previewed() -> bool:
                return await state_of(mesh, job.id) == job_pb2.JOB_STATE_PREVIEW_READY

            await eventually(previewed, within=20)
            # The second worker is up before the first dies, so it can take the job at once.
            second = start_process("services.providers", env)
            await eventually(lambda: mesh.serving(2), within=20)
            assert await state_of(mesh, job.id) == job_pb2.JOB_STATE_PREVIEW_READY
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            events = await asyncio.wait_for(mesh.watch(job.id), 60)
        finally:
            await stop_process(first)
            if second is not None:
                await stop_process(second)
        # (The mesh is down; the storage database is still there to count rows in.)
        states = [e.state for e in events]
        assert states.count(job_pb2.JOB_STATE_COMPLETED) == 1
        assert states[-1] == job_pb2.JOB_STATE_COMPLETED
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        lost = [e.progress.message for e in events if "was lost" in e.progress.message]
        assert len(lost) == noticed, lost
        assert all("goes to another worker" in m for m in lost), lost
        rows = await asset_rows(mesh, job.id)
        assert rows[asset_pb2.ASSET_ROLE_OUTPUT] == 1
        assert rows[asset_pb2.ASSET_ROLE_PREVIEW] == 1
        assert len(events[-1].assets) == 1


# What the worker logs does not depend on the router's database.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_stopped_worker_names_the_jobs_it_hands_back(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        workers=0,
        router_overrides={"GENMESH_WORKER_LOST_AFTER": "0.5"},
    ) as mesh:
        # It waits for none of its running jobs: they are handed back as it stops.
        env = {**mesh.env, "GENMESH_WORKER_DRAIN_TIMEOUT": "0"}
        log = tmp_path / "worker.log"
        with log.open("wb") as f:
            worker = start_process("services.providers", env, stderr=f)
        try:
            await mesh.wait_for_provider()
            jobs = [
                await submit(mesh, spec(latency_ms=60_000, width=32, height=32)) for _ in range(3)
            ]
            started = {job_pb2.JOB_STATE_PROCESSING, job_pb2.JOB_STATE_PREVIEW_READY}

            async def running() -> bool:
                return all([await state_of(mesh, j.id) in started for j in jobs])

            await eventually(running, within=20)
            assert await stop_process(worker, signal.SIGTERM) == 0
            # Gone cleanly, having handed its jobs back: the router does not take it for lost.
            await asyncio.sleep(3)
            for j in jobs:
                # Its watchers were told, and no router took it for lost.
                assert (await mesh.get_job(j.id)).progress.message == (
                    "the worker is stopping; the job goes back to the queue"
                )
        finally:
            await stop_process(worker)
        said = [line for line in log.read_text().splitlines() if "handed back" in line]
        assert len(said) == 1, log.read_text()
        _, _, ids = said[0].partition(
            ": handed back 3 unfinished jobs to the queue for another worker: "
        )
        assert sorted(ids.split(", ")) == sorted(j.id for j in jobs), said


async def test_router_restart_with_queued_jobs_loses_nothing(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        workers=0,
        router_in_process=False,
    ) as mesh:
        settings = WorkerSettings.from_env(mesh.env)
        # A worker registers the provider, then leaves: jobs for it will wait in the queue.
        async with running_worker(settings):
            await mesh.wait_for_provider()
        jobs = [await submit(mesh, spec(width=32, height=32)) for _ in range(20)]
        assert {await state_of(mesh, j.id) for j in jobs} == {job_pb2.JOB_STATE_QUEUED}

        await mesh.restart_router(signal.SIGKILL)

        async with running_worker(settings):
            results = await asyncio.wait_for(asyncio.gather(*(mesh.watch(j.id) for j in jobs)), 60)
        for events in results:
            assert events[-1].state == job_pb2.JOB_STATE_COMPLETED
            assert [e.state for e in events].count(job_pb2.JOB_STATE_COMPLETED) == 1


# Worker concurrency does not depend on the router's database.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_one_worker_runs_200_two_second_jobs_at_once(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url, prefix=nats_prefix, database=database, data_dir=tmp_path, workers=0
    ) as mesh:
        settings = WorkerSettings.from_env(mesh.env)
        async with running_worker(settings):
            await mesh.wait_for_provider()
        # Queue them all first, so the submits (in this same process) do not pace the worker.
        jobs = [
            await submit(mesh, spec(latency_ms=2000, steps=2, width=32, height=32))
            for _ in range(200)
        ]
        async with running_worker(settings) as running:
            worker = running.workers[0]
            # All 200 are running at the same moment, not one after another.
            await eventually(lambda: worker.in_flight >= 200, within=30)
            results = await asyncio.wait_for(asyncio.gather(*(mesh.watch(j.id) for j in jobs)), 90)
        assert all(events[-1].state == job_pb2.JOB_STATE_COMPLETED for events in results)


# Worker concurrency does not depend on the router's database.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_concurrency_is_bounded_by_the_setting(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        worker_overrides={"GENMESH_WORKER_CONCURRENCY": "10"},
    ) as mesh:
        worker = mesh.workers[0].workers[0]
        jobs = await asyncio.gather(
            *(submit(mesh, spec(latency_ms=300, steps=1, width=32, height=32)) for _ in range(40))
        )
        results, peak = await mesh.watch_all_with_peak(jobs, worker)
        assert all(events[-1].state == job_pb2.JOB_STATE_COMPLETED for events in results)
        assert peak == 10


async def test_events_held_by_a_killed_router_come_back_within_the_ack_wait(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        router_in_process=False,
        router_overrides={"GENMESH_RECORDER_ACK_WAIT": "2"},
    ) as mesh:
        steps = 30
        jobs = [
            await submit(mesh, spec(latency_ms=3000, steps=steps, preview=False, width=32))
            for _ in range(8)
        ]

        async def all_processing() -> bool:
            return {await state_of(mesh, j.id) for j in jobs} == {job_pb2.JOB_STATE_PROCESSING}

        await eventually(all_processing, within=15)
        # Frozen, the router keeps its pull request open: the worker's progress is delivered
        # to it and held unacknowledged, as by a router that dies in the middle of a batch.
        assert mesh.router_proc is not None
        mesh.router_proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(1.5)
        await mesh.restart_router(signal.SIGKILL)
        restarted = asyncio.get_running_loop().time()

        results = await asyncio.wait_for(asyncio.gather(*(mesh.watch(j.id) for j in jobs)), 60)
        # The held events come back after the 2 s ack wait, not JetStream's 30 s default;
        # until they do, each job's later events wait behind them.
        assert asyncio.get_running_loop().time() - restarted < 15
        for events in results:
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert events[-1].state == job_pb2.JOB_STATE_COMPLETED
            steps_seen = [e.progress.message for e in events if "step" in e.progress.message]
            assert steps_seen == [f"step {i}/{steps}" for i in range(1, steps + 1)]


# The restarted storage keeps its own SQLite file and blobs beside the mesh's database.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_storage_restart_does_not_fail_the_jobs_that_were_running(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path, held_port: int
) -> None:
    # Held throughout: storage comes back where the workers look.
    address = f"127.0.0.1:{held_port}"
    own = StorageSettings.from_env(
        {
            "GENMESH_LISTEN": address,
            "GENMESH_DATA_DIR": str(tmp_path / "storage"),
            "GENMESH_SHUTDOWN_GRACE": "0.2",
        }
    )
    (tmp_path / "storage").mkdir()
    (tmp_path / "mesh").mkdir()
    first: AbstractAsyncContextManager[object] = running_storage(own)
    await first.__aenter__()
    stopped = False
    try:
        async with running_mesh(
            nats_url=nats_url,
            prefix=nats_prefix,
            database=database,
            data_dir=tmp_path / "mesh",
            worker_overrides={"GENMESH_STORAGE_ADDR": address},
        ) as mesh:
            jobs = [
                await submit(mesh, spec(latency_ms=1500, preview=False, width=32)) for _ in range(6)
            ]

            async def all_processing() -> bool:
                states = {await state_of(mesh, j.id) for j in jobs}
                return states == {job_pb2.JOB_STATE_PROCESSING}

            await eventually(all_processing, within=15)
            watching = asyncio.gather(*(mesh.watch(j.id) for j in jobs))
            # Down while the jobs end and store their outputs; back two seconds later.
            stopped = True
            await first.__aexit__(None, None, None)
            await asyncio.sleep(2.0)
            async with running_storage(own):
                results = await asyncio.wait_for(watching, 60)
    finally:
        if not stopped:
            await first.__aexit__(None, None, None)
    for events in results:
        assert events[-1].state == job_pb2.JOB_STATE_COMPLETED, events[-1]
        # Stored by the first delivery, which waited for storage: not run a second time.
        assert not [e for e in events if "restarted" in e.progress.message]
