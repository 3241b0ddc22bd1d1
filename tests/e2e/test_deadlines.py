"""Time limits through the whole mesh: attempt timeouts fall back, job deadlines stop slow
jobs and fail waiting ones, Generate's call deadline bounds its job, and retries wait as
long as the provider asked (Retry-After) and no longer than the backoff allows."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2, provider_service_pb2
from services.common.parameters import dict_to_struct
from tests.conftest import Database
from tests.e2e.test_job_flow import submit
from tests.infra import eventually
from tests.mesh import Mesh, running_mesh

FAILED, COMPLETED = job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_COMPLETED
RETRY = re.compile(r"retrying in (\d+\.\d)s")


def image(
    provider: str = "", *, timeout: float = 0, attempt: float = 0, **params: object
) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        provider=provider,
        parameters=dict_to_struct({"width": 32, "height": 32, "steps": 1, **params}),
    )
    if timeout:
        spec.timeout.FromNanoseconds(round(timeout * 1e9))
    if attempt:
        spec.attempt_timeout.FromNanoseconds(round(attempt * 1e9))
    return spec


def seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


@asynccontextmanager
async def slow_and_fast(
    nats_url: str, prefix: str, database: Database, data_dir: Path
) -> AsyncIterator[Mesh]:
    """slow-a, whose every call outlasts its 0.5 s attempt timeout and which retries once,
    and fast-b; the worker itself allows two retries."""
    catalog = """
[[providers]]
name = "slow-a"
family = "sandbox"
attempt_timeout = 0.5
max_retries = 1
options = { latency_ms = 20000 }

[[providers]]
name = "fast-b"
family = "sandbox"
"""
    async with running_mesh(
        nats_url=nats_url,
        prefix=prefix,
        database=database,
        data_dir=data_dir,
        worker_overrides={"GENMESH_WORKER_MAX_DELIVER": "3"},
        catalog=catalog,
        providers=("slow-a", "fast-b"),
        router_overrides={"GENMESH_ROUTING_PRIORITY": "slow-a,fast-b"},
    ) as mesh:
        yield mesh


async def test_attempt_timeout_retries_up_to_the_instance_limit_then_falls_back(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with slow_and_fast(nats_url, nats_prefix, database, tmp_path) as mesh:
        listed = await mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
        limits = {p.name: p.limits for p in listed.providers}
        job, events = await mesh.finished((await submit(mesh, image())).id)
        slow = mesh.provider_worker("slow-a")
        # The timed-out calls were stopped, not left running.
        await eventually(lambda: slow.in_flight == 0, within=5)
        # A job's own attempt timeout wins over the instance's (none, at fast-b).
        strict, strict_events = await mesh.finished(
            (await submit(mesh, image("fast-b", attempt=0.3, latency_ms=5000))).id
        )

    assert limits["slow-a"].max_retries == 1
    assert limits["slow-a"].attempt_timeout.ToNanoseconds() == 500_000_000
    assert limits["fast-b"].max_retries == 2 and not limits["fast-b"].HasField("attempt_timeout")

    assert job.state == COMPLETED and job.provider == "fast-b"
    first, second = job.attempts
    assert (first.provider, first.error.code, first.error.kind) == (
        "slow-a",
        "timeout",
        job_pb2.ERROR_KIND_RETRYABLE,
    )
    assert "0.5s timeout" in first.error.message
    assert second.provider == "fast-b" and second.outcome == job_pb2.ATTEMPT_OUTCOME_SUCCEEDED
    # slow-a's own limit: one retry (two calls), although the worker allows two.
    slow_retries = [e for e in events if e.provider == "slow-a" and RETRY.match(e.progress.message)]
    assert len(slow_retries) == 1
    # Two half-second calls and a backoff, not 20-second ones.
    assert seconds(first.end_time) - seconds(first.start_time) < 10

    assert strict.state == FAILED
    assert (strict.error.code, strict.error.kind) == ("timeout", job_pb2.ERROR_KIND_RETRYABLE)
    assert "0.3s timeout" in strict.error.message
    assert len([e for e in strict_events if RETRY.match(e.progress.message)]) == 2


async def test_job_deadline_stops_a_slow_job(mesh: Mesh) -> None:
    worker = mesh.workers[0].workers[0]
    started = time.time()
    job = await submit(mesh, image(timeout=1.5, latency_ms=60_000, steps=60))
    assert seconds(job.deadline) == pytest.approx(started + 1.5, abs=1.0)
    final, events = await mesh.finished(job.id)
    took = time.time() - started

    assert final.state == FAILED
    assert (final.error.code, final.error.kind) == ("deadline_exceeded", job_pb2.ERROR_KIND_FATAL)
    assert final.error.message.startswith("the job's deadline passed")
    assert 1.4 <= took < 15
    assert len(final.attempts) == 1
    assert not any(RETRY.match(e.progress.message) for e in events)
    # The provider call is stopped: the worker holds nothing any more.
    await eventually(lambda: worker.in_flight == 0, within=5)


async def test_a_job_no_worker_takes_fails_at_its_deadline(mesh: Mesh) -> None:
    worker = mesh.workers[0].workers[0]
    worker.stop_fetching()
    await asyncio.sleep(1.2)  # let the fetch loop notice
    job = await submit(mesh, image(timeout=1.0))
    final, events = await mesh.finished(job.id)

    assert [e.state for e in events] == [job_pb2.JOB_STATE_QUEUED, FAILED]
    assert final.error.code == "deadline_exceeded"
    assert final.error.message == "the job's deadline passed: no worker started it in time"
    late = seconds(events[-1].time) - seconds(final.deadline)
    # The sweeper runs every second; allow a busy machine a lot more.
    assert 0 <= late < 10


async def test_generate_call_deadline_bounds_the_job(mesh: Mesh) -> None:
    async def first_job(spec: job_pb2.JobSpec, call_timeout: float) -> job_pb2.Job:
        call = mesh.generate.Generate(
            generate_service_pb2.GenerateRequest(spec=spec), timeout=call_timeout
        )
        async for reply in call:
            call.cancel()
            return reply.job
        raise AssertionError("Generate sent nothing")

    # gRPC sends the call's timeout in coarse units (rounded up): allow it a second.
    now = time.time()
    by_call = await first_job(image(latency_ms=0), 30)
    assert now + 25 < seconds(by_call.deadline) <= time.time() + 31
    by_timeout = await first_job(image(timeout=5, latency_ms=0), 30)
    assert now + 4 < seconds(by_timeout.deadline) <= time.time() + 5
    stored = await mesh.get_job(by_call.id)
    assert stored.deadline == by_call.deadline
    # Submit has no call deadline to honour: no timeout, no deadline.
    plain = await submit(mesh, image())
    assert not plain.HasField("deadline")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        bad = image()
        bad.timeout.FromNanoseconds(-1_000_000_000)
        await submit(mesh, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timeout must be positive" in (err.value.details() or "")


@pytest.mark.parametrize("budget", ["attempt_timeout", "hedge_after"])
@pytest.mark.parametrize("pipeline", [False, True], ids=["job", "pipeline"])
async def test_a_negative_time_budget_is_refused(mesh: Mesh, budget: str, pipeline: bool) -> None:
    # Taken as unset before; a negative attempt_timeout even lifted the provider's own.
    bad = image()
    if pipeline:
        bad = job_pb2.JobSpec(
            prompt="a paper boat", pipeline=job_pb2.PipelineSpec(name="text-to-video")
        )
    getattr(bad, budget).FromNanoseconds(-1_000_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(mesh, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{budget} must not be negative" in (err.value.details() or "")
    assert not (await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs


MALFORMED = [
    (duration_pb2.Duration(seconds=1, nanos=2_000_000_000), "Nanos 2000000000"),
    (duration_pb2.Duration(seconds=1, nanos=-5), "Sign mismatch"),
    (duration_pb2.Duration(seconds=10**12), "Seconds 1000000000000"),
]


# Checked before anything is stored, whatever the store.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize("budget", ["timeout", "attempt_timeout", "hedge_after"])
async def test_a_malformed_duration_is_refused(mesh: Mesh, budget: str) -> None:
    # Stored as given before: the job's JSON (the bridge's GET and list, the CLI's --json)
    # then failed to print, a 500 for every page holding it.
    for duration, says in MALFORMED:
        bad = image()
        getattr(bad, budget).CopyFrom(duration)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(mesh, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{budget} is not a valid Duration: {says}" in (err.value.details() or "")
    assert not (await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs


def gaps(events: list[job_pb2.JobEvent]) -> list[tuple[float, float]]:
    """(announced delay, seconds until the next delivery started) for every retry note."""
    out = []
    for i, event in enumerate(events):
        match = RETRY.match(event.progress.message)
        if match:
            restart = next(e for e in events[i + 1 :] if e.progress.message.startswith("restart"))
            out.append((float(match.group(1)), seconds(restart.time) - seconds(event.time)))
    return out


# Retry timing is the worker's; the router's database plays no part.
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_backoff_honours_retry_after_and_stays_within_its_ceiling(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        worker_overrides={"GENMESH_WORKER_MAX_DELIVER": "3"},
    ) as mesh:
        asked = await submit(mesh, image(retry_after_s=1.5, fail_rate=1.0, latency_ms=0))
        plain = await submit(mesh, image(fail_rate=1.0, latency_ms=0))
        invalid = await submit(mesh, image(fail_rate=1.0, fail_kind="invalid_input"))
        (
            (asked_job, asked_events),
            (plain_job, plain_events),
            (bad, bad_events),
        ) = await asyncio.gather(*(mesh.finished(j.id) for j in (asked, plain, invalid)))

    # Retry-After 1.5 s: each retry waits at least that, and not much beyond it (the backoff
    # ceilings of the first two deliveries, 0.5 s and 1 s, are below it).
    waits = gaps(asked_events)
    assert len(waits) == 2 and asked_job.state == FAILED
    for announced, gap in waits:
        assert announced >= 1.5
        assert 1.5 <= gap < 1.5 + 5
    # No Retry-After: full jitter under 0.5 s, then under 1 s; each gap at least as announced.
    waits = gaps(plain_events)
    assert len(waits) == 2 and plain_job.state == FAILED
    for (announced, gap), ceiling in zip(waits, (0.5, 1.0), strict=True):
        assert announced <= ceiling
        assert announced - 0.05 <= gap < ceiling + 5
    # Invalid input is never retried: one delivery, the provider's reason, at once.
    assert bad.state == FAILED and bad.error.kind == job_pb2.ERROR_KIND_INVALID_INPUT
    assert bad.error.message.startswith("sandbox injected a failure of kind invalid_input")
    assert not any(RETRY.match(e.progress.message) for e in bad_events)
    assert not any(e.progress.message.startswith("restart") for e in bad_events)
