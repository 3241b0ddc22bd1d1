"""The mesh on a three-node NATS cluster with replicated streams: losing a node loses no job."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from genmesh.v1 import generate_service_pb2, job_pb2
from services.common.bus import Bus
from services.common.parameters import dict_to_struct
from tests.conftest import Database
from tests.infra import NatsNode, nats_cluster, unique
from tests.mesh import running_mesh

# The scaled-out deployment: a NATS cluster with PostgreSQL.
pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


@pytest.fixture
def cluster() -> Iterator[list[NatsNode]]:
    with nats_cluster(3) as nodes:
        yield nodes


async def leader_of(url: str, stream: str) -> str:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader
    finally:
        await nc.close()


async def test_killing_the_jobs_stream_leader_loses_no_job(
    cluster: list[NatsNode], database: Database, tmp_path: Path
) -> None:
    prefix = unique("c")
    replicated = {
        "GENMESH_NATS_REPLICAS": "3",
        # A job the dead leader had delivered, or whose ack it lost, comes back after this.
        "GENMESH_WORKER_ACK_WAIT": "10",
    }
    async with running_mesh(
        nats_url=",".join(node.url for node in cluster),
        prefix=prefix,
        database=database,
        data_dir=tmp_path,
        workers=2,
        router_overrides=replicated,
    ) as mesh:
        spec = job_pb2.JobSpec(
            task=job_pb2.TASK_TEXT_TO_IMAGE,
            prompt="a red fox in snow",
            parameters=dict_to_struct({"latency_ms": 3000, "steps": 6, "width": 32, "height": 32}),
        )
        jobs = [
            (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))).job
            for _ in range(20)
        ]
        leader = await leader_of(cluster[0].url, Bus(prefix, 3).jobs_stream)
        await asyncio.sleep(1.0)  # the jobs are running
        next(node for node in cluster if node.name == leader).kill()
        # Jobs submitted while the cluster elects a new leader are taken too.
        jobs += [
            (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))).job
            for _ in range(5)
        ]

        outcomes = await asyncio.gather(*(mesh.finished(job.id, within=120) for job in jobs))

        for final, events in outcomes:
            assert final.state == job_pb2.JOB_STATE_COMPLETED, final.error
            assert [e.state for e in events].count(job_pb2.JOB_STATE_COMPLETED) == 1
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
