"""Hedging through the whole mesh: a slow sandbox instance that shows no progress and a fast
one; the job is hedged onto the fast one, completes from it, and the slow provider call is
stopped. A job that reports progress in time is left alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from genmesh.v1 import generate_service_pb2, job_pb2, provider_service_pb2
from services.common.parameters import dict_to_struct
from tests.conftest import Database
from tests.e2e.test_admission import another_router
from tests.infra import eventually
from tests.mesh import Mesh, running_mesh

SLOW_MS = 20_000
CANCELLED = job_pb2.ATTEMPT_OUTCOME_CANCELLED
SUCCEEDED = job_pb2.ATTEMPT_OUTCOME_SUCCEEDED


@asynccontextmanager
async def slow_and_fast(
    nats_url: str, prefix: str, database: Database, data_dir: Path
) -> AsyncIterator[Mesh]:
    """sandbox-slow (first by priority, latency as the job asks) and sandbox-fast (always
    instant), with costs; the router hedges after 0.5 s without progress, and one
    provider-side failure would open a circuit."""
    catalog = """
[[providers]]
name = "sandbox-slow"
family = "sandbox"
cost = { default = 0.01 }

[[providers]]
name = "sandbox-fast"
family = "sandbox"
cost = { default = 0.02 }
options = { latency_ms = 0 }
"""
    async with running_mesh(
        nats_url=nats_url,
        prefix=prefix,
        database=database,
        data_dir=data_dir,
        catalog=catalog,
        providers=("sandbox-slow", "sandbox-fast"),
        router_overrides={
            "GENMESH_ROUTING_PRIORITY": "sandbox-slow,sandbox-fast",
            "GENMESH_HEDGE_AFTER": "0.5",
            "GENMESH_CIRCUIT_FAILURES": "1",
        },
    ) as mesh:
        yield mesh


def image(latency_ms: int, steps: int, hedge_after: float | None = None) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        parameters=dict_to_struct(
            {"width": 32, "height": 32, "latency_ms": latency_ms, "steps": steps, "preview": False}
        ),
    )
    if hedge_after is not None:
        spec.hedge_after.FromNanoseconds(int(hedge_after * 1e9))
    return spec


async def test_hedging_picks_the_faster_and_cancels_the_slower(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with slow_and_fast(nats_url, nats_prefix, database, tmp_path) as mesh:
        slow = mesh.provider_worker("sandbox-slow")
        started = time.monotonic()
        job = (
            await mesh.generate.Submit(
                generate_service_pb2.SubmitRequest(spec=image(SLOW_MS, steps=0))
            )
        ).job
        [events], peak = await asyncio.wait_for(mesh.watch_all_with_peak([job], slow), 15)
        took = time.monotonic() - started
        # The slow provider call is stopped, long before its 20 s would be up.
        await eventually(lambda: slow.in_flight == 0, within=5)
        stopped = time.monotonic() - started
        job = await mesh.get_job(job.id)
        reply = await mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())

    assert peak == 1  # the slow attempt really ran
    assert took < SLOW_MS / 1000 / 2
    assert stopped < SLOW_MS / 1000 / 2
    assert job.state == job_pb2.JOB_STATE_COMPLETED
    assert job.provider == "sandbox-fast"
    assert job.assets
    # Both attempts, with their times, outcomes and costs.
    first, second = job.attempts
    assert (first.attempt, first.provider, first.hedge, first.outcome) == (
        1,
        "sandbox-slow",
        False,
        CANCELLED,
    )
    assert (first.error.code, first.error.message) == (
        "lost_hedge",
        "lost the hedge to sandbox-fast",
    )
    assert first.cost_usd == 0.01
    assert (second.attempt, second.provider, second.hedge, second.outcome) == (
        2,
        "sandbox-fast",
        True,
        SUCCEEDED,
    )
    assert second.reason == (
        "hedging: no progress from sandbox-slow for 0.5s; starting sandbox-fast beside it"
    )
    assert second.cost_usd == 0.02
    for attempt in job.attempts:
        assert attempt.end_time.ToNanoseconds() >= attempt.start_time.ToNanoseconds() > 0
    # Hedged only after 0.5 s of silence.
    silent = (second.start_time.ToNanoseconds() - first.start_time.ToNanoseconds()) / 1e9
    assert silent >= 0.5
    # Watchers saw the hedge as a step, and the end from the winner.
    assert any(e.progress.message == second.reason for e in events)
    assert job_pb2.JOB_STATE_FAILED not in [e.state for e in events]
    assert (events[-1].state, events[-1].provider) == (
        job_pb2.JOB_STATE_COMPLETED,
        "sandbox-fast",
    )
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    # Losing the hedge is no failure: one failure would have opened the circuit.
    circuits = {p.name: p.health.circuit for p in reply.providers}
    assert circuits["sandbox-slow"] == provider_service_pb2.CIRCUIT_STATE_CLOSED


async def test_a_job_that_reports_progress_in_time_is_not_hedged(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with slow_and_fast(nats_url, nats_prefix, database, tmp_path) as mesh:
        # 4 s with progress every 0.2 s; hedged after 1.5 s of silence (the job's own setting).
        spec = image(4000, steps=20, hedge_after=1.5)
        job = (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))).job
        events = await asyncio.wait_for(mesh.watch(job.id), 30)
        job = await mesh.get_job(job.id)

    assert job.state == job_pb2.JOB_STATE_COMPLETED
    assert [(a.provider, a.hedge, a.outcome) for a in job.attempts] == [
        ("sandbox-slow", False, SUCCEEDED)
    ]
    assert not any(e.progress.message.startswith("hedging") for e in events)
    assert sum(e.progress.message.startswith("step ") for e in events) == 20


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_job_whose_router_replica_has_gone_is_still_hedged(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with slow_and_fast(nats_url, nats_prefix, database, tmp_path) as mesh:
        # Submitted to a second replica, which stops before the job's 4 s of silence are up:
        # the replica left must hedge it, or it waits out the slow provider's 20 s.
        async with another_router(mesh) as (_, via_second):
            spec = image(SLOW_MS, steps=0, hedge_after=4)
            reply = await via_second.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))
        final, _ = await mesh.finished(reply.job.id, within=15)

    assert final.state == job_pb2.JOB_STATE_COMPLETED
    assert [(a.provider, a.hedge) for a in final.attempts] == [
        ("sandbox-slow", False),
        ("sandbox-fast", True),
    ]
