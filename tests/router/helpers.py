"""Pieces the router's tests share: two providers, the store-selector-dispatcher world the
`world` fixture (conftest.py) builds, a job dispatched to the first provider, a clock, and jobs
and pipelines stored as the router stores them."""

from __future__ import annotations

from dataclasses import dataclass

import nats

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.bus import Bus
from services.common.parameters import dict_to_struct
from services.router.attempts import open_attempt
from services.router.breakers import Breakers
from services.router.dispatch import Dispatcher
from services.router.fallback import Fallback
from services.router.selection import LatencyTracker
from services.router.store import Incoming, JobStore

IMAGE = job_pb2.TASK_TEXT_TO_IMAGE


def provider(name: str, cost: float) -> provider_service_pb2.Provider:
    p = provider_service_pb2.Provider(name=name, tasks=[IMAGE], cost_per_job_usd=cost)
    p.parameters.add(name="width", type=provider_service_pb2.PARAMETER_TYPE_INTEGER)
    p.health.status = provider_service_pb2.PROVIDER_STATUS_AVAILABLE
    return p


PROVIDERS = [provider("a", 0.01), provider("b", 0.02)]


@dataclass
class World:
    store: JobStore
    dispatcher: Dispatcher
    fallback: Fallback
    breakers: Breakers
    latency: LatencyTracker
    js: nats.js.JetStreamContext
    bus: Bus


async def created(store: JobStore) -> job_pb2.Job:
    """A job dispatched to `a`, as the router's submit leaves it."""
    job = job_pb2.Job(id="j_fallback", tenant_id="t", provider="a", state=job_pb2.JOB_STATE_QUEUED)
    job.spec.task = IMAGE
    job.spec.prompt = "a red fox"
    job.spec.parameters.CopyFrom(dict_to_struct({"width": 64}))
    job.routing.policy = job_pb2.ROUTING_POLICY_PRIORITY
    job.routing.requested_parameters.CopyFrom(dict_to_struct({"width": 64}))
    job.last_sequence = 1
    job.create_time.GetCurrentTime()
    open_attempt(job, PROVIDERS[0], "first in priority order", job.create_time)
    first = job_pb2.JobEvent(job_id=job.id, sequence=1, state=job_pb2.JOB_STATE_QUEUED)
    first.time.CopyFrom(job.create_time)
    await store.create(job, "hash", first)
    await store.mark_dispatched([job.id])
    return job


def worker_event(state: int, seq: int, attempt: int, kind: int = 0) -> Incoming:
    event = job_pb2.JobEvent(job_id="j_fallback", state=state)  # type: ignore[arg-type]
    if state == job_pb2.JOB_STATE_FAILED:
        event.error.code = "server_error"
        event.error.message = "HTTP 503 from a"
        event.error.kind = kind  # type: ignore[assignment]
    return Incoming("j_fallback", event, stream_seq=seq, attempt=attempt)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def add_job(
    store: JobStore,
    job_id: str,
    created: float,
    *,
    task: int = IMAGE,
    parent: str = "",
    state: int = job_pb2.JOB_STATE_QUEUED,
    tenant: str = "t",
    key: str = "",
) -> None:
    """A job as the router stores it: a step names its pipeline (and has its key), a
    pipeline has no task."""
    job = job_pb2.Job(id=job_id, tenant_id=tenant, state=state, last_sequence=1)  # type: ignore[arg-type]
    job.spec.task = task  # type: ignore[assignment]
    job.spec.idempotency_key = key
    if parent:
        job.parent_job_id = parent
        job.pipeline_step = f"step-{job_id}"
        job.spec.idempotency_key = f"pipeline:{parent}:{job.pipeline_step}"
    job.create_time.FromNanoseconds(int(created * 1e9))
    first = job_pb2.JobEvent(job_id=job_id, sequence=1, state=state)  # type: ignore[arg-type]
    await store.create(job, "hash", first, dispatched=True)


async def add_pipeline(store: JobStore, job_id: str, created: float, tasks: list[int]) -> list[str]:
    """A pipeline and its steps' jobs, each step made after the one before; the steps' ids."""
    await add_job(
        store, job_id, created, task=job_pb2.TASK_UNSPECIFIED, state=job_pb2.JOB_STATE_COMPLETED
    )
    steps = [f"{job_id}_s{n}" for n in range(len(tasks))]
    for n, (step, task) in enumerate(zip(steps, tasks, strict=True)):
        await add_job(
            store,
            step,
            created + 0.1 * (n + 1),
            task=task,
            parent=job_id,
            state=job_pb2.JOB_STATE_COMPLETED,
        )
    return steps
