"""A killed worker's jobs go on once: not twice when two router replicas both notice it, nor
at all when the worker had handed the job back itself to retry it later."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from genmesh.v1 import job_pb2, job_service_pb2
from services.router.app import running_router
from services.router.settings import Settings as RouterSettings
from tests.conftest import Database
from tests.e2e.test_resilience import spec, submit
from tests.infra import eventually
from tests.mesh import Mesh, running_mesh, start_process, stop_process

# Odd: replicas fetch in turn, so with an even number of jobs stepping in step, each
# job's messages could all reach the same replica.
JOBS = 5


def deliveries(events: list[job_pb2.JobEvent]) -> list[str]:
    """The job's runs as its watchers saw them begin, and its lost-worker notes."""
    return [
        e.progress.message
        for e in events
        if e.progress.message.startswith(("started", "restarted", "worker "))
    ]


def lost_after_one_second(
    nats_url: str, prefix: str, database: Database, data_dir: Path
) -> AbstractAsyncContextManager[Mesh]:
    """A mesh without workers whose router takes a worker for lost after a second."""
    return running_mesh(
        nats_url=nats_url,
        prefix=prefix,
        database=database,
        data_dir=data_dir,
        workers=0,
        router_overrides={"GENMESH_WORKER_LOST_AFTER": "1"},
    )


# Replicas share one database: PostgreSQL, as the mesh is scaled out.
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_two_replicas_send_a_lost_workers_jobs_on_once(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    """Both replicas heard from each run, and both find the worker gone; a second nak
    through the same delivery would send the job on again while it already runs anew."""
    async with lost_after_one_second(nats_url, nats_prefix, database, tmp_path) as mesh:
        assert mesh.router is not None
        settings = RouterSettings.from_env({**mesh.env, "GENMESH_LISTEN": "127.0.0.1:0"})
        async with running_router(settings) as other:
            # Only the routers can send the jobs on before the test ends.
            env = {**mesh.env, "GENMESH_WORKER_ACK_WAIT": "600"}
            first = start_process("services.providers", env)
            second = None
            try:
                await mesh.wait_for_provider()
                # Progress twice a second, so both replicas hear from every run.
                jobs = [
                    await submit(mesh, spec(latency_ms=12_000, steps=24, width=32, height=32))
                    for _ in range(JOBS)
                ]
                ids = {job.id for job in jobs}
                routers = (mesh.router, other)
                await eventually(lambda: all(r.lost.watched == ids for r in routers), within=20)
                second = start_process("services.providers", env)
                await eventually(lambda: mesh.serving(2), within=20)
                os.kill(first.pid, signal.SIGKILL)
                first.wait()
                watched = await asyncio.wait_for(
                    asyncio.gather(*(mesh.watch(job.id) for job in jobs)), 90
                )
                # Nothing left to watch over once the jobs are done.
                await eventually(lambda: not any(r.lost.watched for r in routers), within=10)
            finally:
                await stop_process(first)
                if second is not None:
                    await stop_process(second)
    for events in watched:
        states = [e.state for e in events]
        assert states.count(job_pb2.JOB_STATE_COMPLETED) == 1
        seen = deliveries(events)
        assert seen[0] == "started", seen
        assert seen[1].endswith(
            "was lost (its NATS connection closed); the job goes to another worker"
        )
        assert seen[2:] == ["restarted (delivery 2)"], seen


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_job_handed_back_to_retry_is_not_sent_on_when_its_worker_dies(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    """The worker failed the job, handed it back to retry after a backoff, and died at once.
    The retry runs on the other worker, once: nakked again through the dead worker's
    delivery, the job would start a third time while the retry runs."""
    async with lost_after_one_second(nats_url, nats_prefix, database, tmp_path) as mesh:
        # Two deliveries: the second one's failure ends the job. A short ack wait, should the
        # worker die before its hand-back reached JetStream.
        env = {**mesh.env, "GENMESH_WORKER_ACK_WAIT": "10", "GENMESH_WORKER_MAX_DELIVER": "2"}
        first = start_process("services.providers", env)
        second = None
        try:
            await mesh.wait_for_provider()
            job = await submit(
                mesh,
                spec(latency_ms=8000, steps=4, fail_rate=1.0, retry_after_s=0, width=32),
            )
            call = mesh.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job.id))
            events = []
            async for reply in call:
                events.append(reply.event)
                message = reply.event.progress.message
                if message == "started" and second is None:
                    # The retry has somewhere to go at once.
                    second = start_process("services.providers", env)
                    await eventually(lambda: mesh.serving(2), within=20)
                if message.startswith("retrying in"):
                    os.kill(first.pid, signal.SIGKILL)
        finally:
            await stop_process(first)
            if second is not None:
                await stop_process(second)
    assert deliveries(events) == ["started", "restarted (delivery 2)"]
    assert events[-1].state == job_pb2.JOB_STATE_FAILED
    assert events[-1].error.message.endswith("gave up after 2 tries"), events[-1].error
