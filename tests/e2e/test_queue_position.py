"""Queued jobs say where they stand in their provider's queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from genmesh.v1 import job_pb2
from tests.conftest import Database
from tests.e2e.test_job_flow import spec, submit
from tests.infra import eventually
from tests.mesh import running_mesh


# Queue positions come from JetStream, not the router's database.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_queued_jobs_carry_their_position(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        worker_overrides={"GENMESH_WORKER_CONCURRENCY": "1"},
    ) as mesh:
        worker = mesh.workers[0].workers[0]
        running = await submit(mesh, spec(latency_ms=5_000, steps=1, width=32, height=32))
        await eventually(lambda: worker.in_flight == 1)

        async def started() -> bool:
            # The router counts a job out of the queue when it records the job starting.
            return (await mesh.get_job(running.id)).state == job_pb2.JOB_STATE_PROCESSING

        await eventually(started)
        # The one worker slot is taken, so these wait, in order.
        waiting = [
            await submit(mesh, spec(latency_ms=0, steps=0, width=32, height=32)) for _ in range(3)
        ]
        # Progress.queue_position counts the jobs ahead: none for the first one waiting.
        assert [j.progress.queue_position for j in waiting] == [0, 1, 2]
        first = (await mesh.watch(waiting[2].id))[0]
        assert first.state == job_pb2.JOB_STATE_QUEUED
        assert first.progress.queue_position == 2
        assert "position 3" in first.progress.message
        await mesh.watch(running.id)
