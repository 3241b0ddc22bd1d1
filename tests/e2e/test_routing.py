"""Routing through the whole mesh: two sandbox instances, one made to fail; fallback, the
recorded routing decision and attempts, strict and soft preferences, and circuit breakers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.parameters import dict_to_struct
from tests.conftest import Database
from tests.e2e.test_job_flow import submit
from tests.e2e.test_pipelines import pipeline_spec, step
from tests.infra import eventually
from tests.mesh import Mesh, running_mesh

SOFT = job_pb2.PROVIDER_PREFERENCE_SOFT
FAILED = job_pb2.ATTEMPT_OUTCOME_FAILED
SUCCEEDED = job_pb2.ATTEMPT_OUTCOME_SUCCEEDED
RETRYABLE = job_pb2.ERROR_KIND_RETRYABLE


@asynccontextmanager
async def two_sandboxes(
    nats_url: str,
    prefix: str,
    database: Database,
    data_dir: Path,
    *,
    failing: bool,
    router: Mapping[str, str] | None = None,
) -> AsyncIterator[Mesh]:
    """sandbox-a (always failing retryably, when `failing`) and a healthy sandbox-b, served
    by one worker that gives up on a job after its first delivery."""
    options = 'options = { fail_rate = 1.0, fail_kind = "retryable" }' if failing else ""
    catalog = f"""
[[providers]]
name = "sandbox-a"
family = "sandbox"
{options}

[[providers]]
name = "sandbox-b"
family = "sandbox"
"""
    async with running_mesh(
        nats_url=nats_url,
        prefix=prefix,
        database=database,
        data_dir=data_dir,
        worker_overrides={"GENMESH_WORKER_MAX_DELIVER": "1"},
        catalog=catalog,
        providers=("sandbox-a", "sandbox-b"),
        router_overrides={"GENMESH_ROUTING_PRIORITY": "sandbox-a,sandbox-b", **(router or {})},
    ) as mesh:
        yield mesh


def image(provider: str = "", preference: int = 0, **params: object) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        provider=provider,
        provider_preference=preference,  # type: ignore[arg-type]
        parameters=dict_to_struct({"width": 32, "height": 32, "steps": 1, **params}),
    )


async def run(mesh: Mesh, spec: job_pb2.JobSpec) -> tuple[job_pb2.Job, list[job_pb2.JobEvent]]:
    """Submit, watch to the end; the job as GetJob shows it, and its events."""
    return await mesh.finished((await submit(mesh, spec)).id)


async def circuits(mesh: Mesh) -> dict[str, int]:
    reply = await mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
    return {p.name: p.health.circuit for p in reply.providers}


async def test_retryable_failure_falls_back_and_completes_on_the_next_provider(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with two_sandboxes(nats_url, nats_prefix, database, tmp_path, failing=True) as mesh:
        job, events = await run(mesh, image())

    assert job.state == job_pb2.JOB_STATE_COMPLETED
    assert job.provider == "sandbox-b"
    assert job.assets
    # The decision: both candidates considered, sandbox-a first by the configured priority.
    assert job.routing.policy == job_pb2.ROUTING_POLICY_PRIORITY
    assert [c.provider for c in job.routing.candidates] == ["sandbox-a", "sandbox-b"]
    assert all(c.eligible for c in job.routing.candidates)
    assert job.routing.reason.startswith("sandbox-a: first in the priority order")
    # Both attempts, in order, with outcome, error class and times.
    first, second = job.attempts
    assert (first.attempt, first.provider, first.outcome) == (1, "sandbox-a", FAILED)
    assert first.error.kind == RETRYABLE
    assert first.error.code == "sandbox_injected_failure"
    assert (second.attempt, second.provider, second.outcome) == (2, "sandbox-b", SUCCEEDED)
    assert second.reason.startswith("falling back from sandbox-a to sandbox-b: sandbox injected")
    assert not second.HasField("error")
    for attempt in job.attempts:
        assert attempt.end_time.ToNanoseconds() >= attempt.start_time.ToNanoseconds() > 0
    assert second.start_time == first.end_time
    # Watchers saw the fallback as a step, and no FAILED state.
    notes = [e.progress.message for e in events]
    assert any(n.startswith("falling back from sandbox-a to sandbox-b") for n in notes)
    assert job_pb2.JOB_STATE_FAILED not in [e.state for e in events]
    assert events[-1].state == job_pb2.JOB_STATE_COMPLETED
    assert events[-1].provider == "sandbox-b"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_a_pipeline_step_falling_back_tells_the_pipelines_watchers_why(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    steps = (step("picture", job_pb2.TASK_TEXT_TO_IMAGE, "{prompt}", width=32, height=32),)
    async with two_sandboxes(nats_url, nats_prefix, database, tmp_path, failing=True) as mesh:
        job, events = await run(mesh, pipeline_spec(steps=steps, prompt="a kite"))

    assert job.state == job_pb2.JOB_STATE_COMPLETED
    handed_back = [e.progress.message for e in events if e.handed_back]
    # Marked as on the step's own stream, so the CLI keeps it beside the next run's start.
    assert len(handed_back) == 1, handed_back
    assert handed_back[0].startswith("picture: falling back from sandbox-a to sandbox-b")


async def test_preferences_invalid_input_and_running_out_of_candidates(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with two_sandboxes(nats_url, nats_prefix, database, tmp_path, failing=True) as mesh:
        strict, _ = await run(mesh, image("sandbox-a"))
        soft, _ = await run(mesh, image("sandbox-a", SOFT))
        invalid, invalid_events = await run(
            mesh, image("sandbox-b", SOFT, fail_rate=1.0, fail_kind="invalid_input")
        )
        exhausted, _ = await run(mesh, image(fail_rate=1.0, fail_kind="retryable"))

    # Strict: the named provider's failure is the job's, after one attempt.
    assert strict.state == job_pb2.JOB_STATE_FAILED
    assert [a.provider for a in strict.attempts] == ["sandbox-a"]
    assert strict.error.kind == RETRYABLE
    assert strict.routing.reason == "named by the caller (strict)"
    # Soft: the named provider first, then the others.
    assert soft.state == job_pb2.JOB_STATE_COMPLETED
    assert [a.provider for a in soft.attempts] == ["sandbox-a", "sandbox-b"]
    assert soft.routing.reason == "sandbox-a preferred by the caller (soft)"
    # Invalid input is never retried, even when another provider could be tried.
    assert invalid.state == job_pb2.JOB_STATE_FAILED
    assert [a.provider for a in invalid.attempts] == ["sandbox-b"]
    assert invalid.error.kind == job_pb2.ERROR_KIND_INVALID_INPUT
    assert invalid.error.message.startswith("sandbox injected a failure of kind invalid_input")
    assert invalid.attempts[0].outcome == FAILED
    assert not any("retrying" in e.progress.message for e in invalid_events)
    # Nobody left: FAILED with the last provider's error and every attempt named.
    assert exhausted.state == job_pb2.JOB_STATE_FAILED
    assert [(a.provider, a.outcome) for a in exhausted.attempts] == [
        ("sandbox-a", FAILED),
        ("sandbox-b", FAILED),
    ]
    assert exhausted.error.provider == "sandbox-b"
    assert exhausted.error.message.endswith(
        "(tried sandbox-a (sandbox_injected_failure), sandbox-b (sandbox_injected_failure))"
    )


async def test_circuit_opens_after_failures_and_a_probe_closes_it(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    router = {"GENMESH_CIRCUIT_FAILURES": "2", "GENMESH_CIRCUIT_COOLDOWN": "2"}
    async with two_sandboxes(
        nats_url, nats_prefix, database, tmp_path, failing=False, router=router
    ) as mesh:
        assert await circuits(mesh) == {
            "sandbox-a": provider_service_pb2.CIRCUIT_STATE_CLOSED,
            "sandbox-b": provider_service_pb2.CIRCUIT_STATE_CLOSED,
        }
        # Two provider-side failures in a row at sandbox-a (strict jobs, so no fallback).
        for _ in range(2):
            job, _ = await run(mesh, image("sandbox-a", fail_rate=1.0))
            assert job.state == job_pb2.JOB_STATE_FAILED
        assert (await circuits(mesh))["sandbox-a"] == provider_service_pb2.CIRCUIT_STATE_OPEN

        # While open, sandbox-a is skipped although it comes first by priority.
        skipped, _ = await run(mesh, image())
        assert [a.provider for a in skipped.attempts] == ["sandbox-b"]
        excluded = {c.provider: c for c in skipped.routing.candidates}["sandbox-a"]
        assert (excluded.eligible, excluded.note) == (False, "circuit open")

        async def half_open() -> bool:
            state = (await circuits(mesh))["sandbox-a"]
            return state == provider_service_pb2.CIRCUIT_STATE_HALF_OPEN

        await eventually(half_open, within=10)
        # After the cool-down one job goes to sandbox-a as a probe; it succeeds and closes it.
        probe, _ = await run(mesh, image())
        assert [a.provider for a in probe.attempts] == ["sandbox-a"]
        assert probe.state == job_pb2.JOB_STATE_COMPLETED
        assert (await circuits(mesh))["sandbox-a"] == provider_service_pb2.CIRCUIT_STATE_CLOSED
