"""Two router replicas share the recorder consumer, so a job's messages are split between
them; every job's stored history and every watcher still has all of its events, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from genmesh.v1 import generate_service_pb2, job_pb2
from services.common.parameters import dict_to_struct
from services.router.app import running_router
from services.router.settings import Settings as RouterSettings
from tests.conftest import Database
from tests.mesh import running_mesh

JOBS = 80
STEPS = 4


def _label(event: job_pb2.JobEvent) -> tuple[int, str, str]:
    return event.sequence, job_pb2.JobState.Name(event.state), event.progress.message


# Replicas share one database: PostgreSQL, as the mesh is scaled out.
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_two_replicas_record_every_jobs_whole_history(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url, prefix=nats_prefix, database=database, data_dir=tmp_path
    ) as mesh:
        settings = RouterSettings.from_env({**mesh.env, "GENMESH_LISTEN": "127.0.0.1:0"})
        async with running_router(settings) as second:
            spec = job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="a red fox in snow",
                # Longer than the worker's linger, so progress travels in several messages;
                # no preview, so each job's history is its progress steps alone.
                parameters=dict_to_struct(
                    {"latency_ms": 120, "steps": STEPS, "preview": False, "width": 32}
                ),
            )
            request = generate_service_pb2.SubmitRequest(spec=spec)
            jobs = [(await mesh.generate.Submit(request)).job for _ in range(JOBS)]
            watched = await asyncio.wait_for(
                asyncio.gather(*(mesh.watch(job.id) for job in jobs)), 90
            )
            for job, seen in zip(jobs, watched, strict=True):
                stored = [e async for e in second.store.replay(job.id, 0)]
                history = [_label(e) for e in stored]
                assert [e.sequence for e in stored] == list(range(1, len(stored) + 1))
                assert history[0][:2] == (1, "JOB_STATE_QUEUED")
                assert history[-1][1] == "JOB_STATE_COMPLETED"
                labels = [message for _, _, message in history]
                assert "started" in labels, history
                for i in range(1, STEPS + 1):
                    assert f"step {i}/{STEPS}" in labels, history
                # The watcher, on the first replica, heard what either replica recorded.
                assert [_label(e) for e in seen] == history
