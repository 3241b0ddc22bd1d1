"""NATS out of reach while jobs are submitted: the caller is told the stored job is QUEUED
(not INTERNAL, which invited a retry that ran the job twice), and once NATS answers again each
job runs exactly once, without a router restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2
from services.common.bus import Bus
from services.common.parameters import dict_to_struct
from tests.conftest import Database
from tests.infra import PrivateNats, eventually, private_nats, unique
from tests.mesh import Mesh, running_mesh


@asynccontextmanager
async def mesh_on_private_nats(
    database: Database, tmp_path: Path
) -> AsyncIterator[tuple[PrivateNats, Mesh]]:
    """A nats-server of the test's own, and a mesh on it."""
    with private_nats(tmp_path / "nats") as server:
        await server.start()
        async with running_mesh(
            nats_url=server.url, prefix=unique("t"), database=database, data_dir=tmp_path
        ) as mesh:
            yield server, mesh


def spec() -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        parameters=dict_to_struct({"width": 32, "height": 32}),
    )


async def generate(mesh: Mesh, first: asyncio.Future[job_pb2.Job]) -> list[job_pb2.JobEvent]:
    """A Generate call's events to the end; the job it answers with first goes to `first`."""
    events = []
    try:
        call = mesh.generate.Generate(generate_service_pb2.GenerateRequest(spec=spec()))
        async for reply in call:
            if reply.HasField("job"):
                first.set_result(reply.job)
            else:
                events.append(reply.event)
    except Exception as exc:
        if first.done():
            raise
        first.set_exception(exc)
    return events


async def submit_all(mesh: Mesh) -> tuple[list[job_pb2.Job], asyncio.Task[list[job_pb2.JobEvent]]]:
    """Submit, Generate and SubmitBatch, each storing jobs it cannot publish yet; the jobs
    they answer with, and the Generate call reading on."""
    streamed: asyncio.Future[job_pb2.Job] = asyncio.get_running_loop().create_future()
    streaming = asyncio.create_task(generate(mesh, streamed))
    try:
        submitted, batch = await asyncio.wait_for(
            asyncio.gather(
                mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec())),
                mesh.generate.SubmitBatch(
                    generate_service_pb2.SubmitBatchRequest(specs=[spec(), spec()])
                ),
            ),
            30,
        )
        first = await asyncio.wait_for(asyncio.shield(streamed), 30)
    except BaseException:
        streaming.cancel()
        raise
    jobs = [submitted.job, first, *batch.jobs]
    assert [j.state for j in jobs] == [job_pb2.JOB_STATE_QUEUED] * 4
    # Still out of reach: nothing has run.
    for job in jobs:
        assert (await mesh.get_job(job.id)).state == job_pb2.JOB_STATE_QUEUED
    return jobs, streaming


def ran_once(events: list[job_pb2.JobEvent]) -> bool:
    states = [e.state for e in events]
    return states[-1] == job_pb2.JOB_STATE_COMPLETED and states.count(states[-1]) == 1


# The outage does not depend on the router's database.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize("outage", ["stalled", "restarted"])
async def test_jobs_submitted_while_nats_is_out_of_reach_are_queued_then_run_once(
    outage: str, database: Database, tmp_path: Path
) -> None:
    async with mesh_on_private_nats(database, tmp_path) as (server, mesh):
        if outage == "stalled":
            server.stall()
        else:
            await server.kill()
        try:
            jobs, streaming = await submit_all(mesh)
        finally:
            # Back before anything else, so a failure here does not hang the mesh's stop.
            if outage == "stalled":
                server.resume()
            else:
                await server.start()
        results = await asyncio.wait_for(asyncio.gather(*(mesh.finished(j.id) for j in jobs)), 60)
        assert ran_once(await asyncio.wait_for(streaming, 30))
        for job, events in results:
            assert ran_once(events), [job_pb2.JobState.Name(e.state) for e in events]
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert len(job.attempts) == 1
        # Each job went into its provider's queue once: the copies sent again while NATS
        # did not answer were dropped by their message ids.
        jobs_stream = Bus(mesh.env["GENMESH_NATS_PREFIX"]).jobs_stream
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().stream_info(jobs_stream)
        finally:
            await nc.close()
        assert info.state.last_seq == len(jobs)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_cancel_while_nats_is_stalled_is_answered_and_reaches_the_worker_later(
    database: Database, tmp_path: Path
) -> None:
    async with mesh_on_private_nats(database, tmp_path) as (server, mesh):
        slow = spec()
        slow.parameters.update({"latency_ms": 120_000})
        job = (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=slow))).job
        worker = mesh.provider_worker("sandbox")
        await eventually(lambda: worker.in_flight == 1, within=15)
        server.stall()
        try:
            # Recorded in the store, so the caller hears CANCELLED; telling the worker waits.
            cancelled = await asyncio.wait_for(
                mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id)), 30
            )
        finally:
            server.resume()
        assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
        # Once NATS answers, the worker is told and stops the provider call: it does not
        # run out its two minutes.
        await eventually(lambda: worker.in_flight == 0, within=20)


# Seconds NATS stays down: past the time a JetStream publish waits for its answer (5 s).
OUTAGE = 7.0


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_job_running_through_a_nats_restart_runs_once(
    database: Database, tmp_path: Path
) -> None:
    """Its progress reports, unanswered while NATS is down, are sent again once it is back:
    the run goes on, rather than failing and running again after the ack wait."""
    async with mesh_on_private_nats(database, tmp_path) as (server, mesh):
        slow = spec()
        # Progress four times a second, so some is published while NATS is down.
        slow.parameters.update({"latency_ms": 15_000, "steps": 60})
        job = (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=slow))).job
        worker = mesh.provider_worker("sandbox")
        await eventually(lambda: worker.in_flight == 1, within=15)
        await server.kill()
        try:
            await asyncio.sleep(OUTAGE)
        finally:
            await server.start()
        _, events = await mesh.finished(job.id, within=90)
    runs = [m for e in events if (m := e.progress.message).startswith(("started", "restarted"))]
    assert runs == ["started"]
    assert ran_once(events)
