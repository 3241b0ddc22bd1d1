"""GENMESH_NATS_URL may list a cluster's servers, comma-separated, as other NATS clients take
it: the router and its worker (real processes) connect to one that answers, and a job runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from genmesh.v1 import job_pb2
from tests.conftest import Database
from tests.e2e.test_job_flow import spec, submit
from tests.infra import free_port
from tests.mesh import running_mesh, start_process, stop_process


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_job_runs_with_several_nats_servers_named(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    # The first is down, as a cluster node may be when a service starts.
    servers = f"nats://127.0.0.1:{free_port()}, {nats_url}"
    async with running_mesh(
        nats_url=servers,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        router_in_process=False,
        workers=0,
    ) as mesh:
        worker = start_process("services.providers", mesh.worker_env())
        try:
            await mesh.wait_for_provider()
            job = await submit(mesh, spec(width=32, height=32))
            done, _ = await mesh.finished(job.id)
        finally:
            await stop_process(worker)
    assert done.state == job_pb2.JOB_STATE_COMPLETED
