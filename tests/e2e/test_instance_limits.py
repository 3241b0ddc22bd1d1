"""A catalog instance's own concurrency limit bounds how many of its jobs a worker runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from genmesh.v1 import job_pb2
from tests.conftest import Database
from tests.e2e.test_job_flow import spec, submit
from tests.mesh import running_mesh


# Worker concurrency does not depend on the router's database.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_instance_concurrency_from_the_catalog(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        worker_overrides={"GENMESH_WORKER_CONCURRENCY": "10"},
        catalog='[[providers]]\nname = "sandbox"\nfamily = "sandbox"\nconcurrency = 2\n',
    ) as mesh:
        worker = mesh.workers[0].workers[0]
        jobs = await asyncio.gather(
            *(submit(mesh, spec(latency_ms=300, steps=1, width=32, height=32)) for _ in range(8))
        )
        results, peak = await mesh.watch_all_with_peak(jobs, worker)
        assert all(events[-1].state == job_pb2.JOB_STATE_COMPLETED for events in results)
        assert peak == 2
