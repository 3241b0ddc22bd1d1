"""Job deadlines in the router: computed at create, never exceeded by a fallback, and swept
for jobs no worker ran to an end, once across replicas, on a real database and JetStream."""

from __future__ import annotations

import time

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from genmesh.v1 import bus_pb2, job_pb2, provider_service_pb2
from services.common.errors import InvalidArgument
from services.router.attempts import open_attempt
from services.router.deadlines import DEADLINE_EXCEEDED, LAST_DEADLINE, job_deadline
from services.router.queues import QueueDepths
from services.router.stopping import WorkerStopper
from services.router.store import Incoming, JobStore
from services.router.sweeper import DeadlineSweeper
from services.router.watch import WatchHub
from tests.infra import eventually
from tests.router.helpers import PROVIDERS, World

CLOSED = provider_service_pb2.CIRCUIT_STATE_CLOSED


def timeout(seconds: float) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE)
    spec.timeout.FromNanoseconds(round(seconds * 1e9))
    return spec


def test_deadline_is_the_sooner_of_the_timeout_and_the_call() -> None:
    now = 1_000.0
    assert job_deadline(job_pb2.JobSpec(), None, now) is None
    deadline = job_deadline(timeout(30), None, now)
    assert deadline is not None and deadline.ToNanoseconds() == 1_030 * 10**9
    sooner_call = job_deadline(timeout(30), 5.5, now)
    assert sooner_call is not None and sooner_call.ToNanoseconds() == 1_005_500_000_000
    sooner_timeout = job_deadline(timeout(2), 60.0, now)
    assert sooner_timeout is not None and sooner_timeout.ToNanoseconds() == 1_002 * 10**9
    only_call = job_deadline(job_pb2.JobSpec(), 9.0, now)
    assert only_call is not None and only_call.ToNanoseconds() == 1_009 * 10**9
    for bad in (0.0, -3.0):
        with pytest.raises(InvalidArgument, match="timeout must be positive"):
            job_deadline(timeout(bad), None, now)
    # The deadline must fit a Timestamp; past year 9999 it was a ValueError (INTERNAL).
    with pytest.raises(InvalidArgument, match="after year 9999"):
        job_deadline(timeout(315_576_000_000), None, now)
    # Only the caller's call deadline that far off is no fault of the spec: the latest time
    # a Timestamp holds, rather than an error about a timeout the spec does not have.
    latest = job_deadline(job_pb2.JobSpec(), 1e12, now)
    assert latest is not None and latest.seconds == LAST_DEADLINE
    # Past Duration's own range (10,000 years), the timeout is not a Duration at all.
    with pytest.raises(InvalidArgument, match="timeout is not a valid Duration"):
        job_deadline(timeout(1e12), 1e12, now)
    sooner = job_deadline(timeout(30), 1e12, now)
    assert sooner is not None and sooner.ToNanoseconds() == 1_030 * 10**9


async def make_job(store: JobStore, job_id: str, deadline_in: float | None) -> None:
    job = job_pb2.Job(id=job_id, tenant_id="t", provider="a", state=job_pb2.JOB_STATE_QUEUED)
    job.spec.task = job_pb2.TASK_TEXT_TO_IMAGE
    job.last_sequence = 1
    job.create_time.GetCurrentTime()
    if deadline_in is not None:
        job.deadline.FromNanoseconds(round((time.time() + deadline_in) * 1e9))
    open_attempt(job, PROVIDERS[0], "first", job.create_time)
    first = job_pb2.JobEvent(job_id=job_id, sequence=1, state=job_pb2.JOB_STATE_QUEUED)
    first.time.CopyFrom(job.create_time)
    await store.create(job, "hash", first)


async def test_sweeper_fails_overdue_jobs_once_and_stops_their_workers(
    world: World, nats_url: str
) -> None:
    store = world.store
    await make_job(store, "j_overdue", -1.0)
    await make_job(store, "j_later", 60.0)
    await make_job(store, "j_none", None)
    await make_job(store, "j_done", -1.0)
    done = job_pb2.JobEvent(job_id="j_done", state=job_pb2.JOB_STATE_COMPLETED)
    assert await store.apply([Incoming("j_done", done)])

    nc = await nats.connect(nats_url)
    try:
        hub = WatchHub(nc, world.bus)
        await hub.start()
        kv = await world.bus.cancellations_kv(world.js)
        queues = QueueDepths(world.js, world.bus)
        replicas = [
            DeadlineSweeper(store, hub, WorkerStopper(nc, world.bus, kv), world.fallback, queues, 1)
            for _ in range(2)
        ]
        heard: list[bus_pb2.CancelRequest] = []

        async def on_cancel(msg: Msg) -> None:
            heard.append(bus_pb2.CancelRequest.FromString(msg.data))

        sub = await nc.subscribe(world.bus.cancel_subject, cb=on_cancel)
        with hub.listen("j_overdue") as listener:
            assert await replicas[0].sweep() == 1
            assert await replicas[1].sweep() == 0  # another replica finds nothing left
            event = await listener.next(5)
        # The hub hands its own events over at once, so the broadcast may still be in flight.
        await eventually(lambda: heard)
        await sub.unsubscribe()
        await hub.stop()

        assert event is not None and event.state == job_pb2.JOB_STATE_FAILED
        job = await store.get("t", "j_overdue")
        assert job is not None and job.state == job_pb2.JOB_STATE_FAILED
        assert (job.error.code, job.error.kind) == (DEADLINE_EXCEEDED, job_pb2.ERROR_KIND_FATAL)
        assert job.error.message == "the job's deadline passed: no worker started it in time"
        assert job.attempts[0].outcome == job_pb2.ATTEMPT_OUTCOME_FAILED
        assert [e.state async for e in store.replay("j_overdue", 0)] == [
            job_pb2.JOB_STATE_QUEUED,
            job_pb2.JOB_STATE_FAILED,
        ]
        # Workers are told: the broadcast stops a running one, the KV entry a later one.
        assert [r.job_id for r in heard] == ["j_overdue"]
        assert (await kv.get("j_overdue")).value
        with pytest.raises(KeyNotFoundError):
            await kv.get("j_later")
        for other in ("j_later", "j_none"):
            untouched = await store.get("t", other)
            assert untouched is not None and untouched.state == job_pb2.JOB_STATE_QUEUED
        finished = await store.get("t", "j_done")
        assert finished is not None and finished.state == job_pb2.JOB_STATE_COMPLETED
        # Running out of the job's time is no verdict on the provider.
        world.breakers.failed("a")
        assert world.breakers.state("a") == CLOSED
    finally:
        await nc.close()


def provider_failed(job_id: str) -> Incoming:
    event = job_pb2.JobEvent(job_id=job_id, state=job_pb2.JOB_STATE_FAILED)
    event.error.code = "server_error"
    event.error.message = "HTTP 503 from a"
    event.error.kind = job_pb2.ERROR_KIND_RETRYABLE
    return Incoming(job_id, event, attempt=1)


async def test_no_fallback_past_the_deadline(world: World) -> None:
    store = world.store
    await make_job(store, "j_late", -1.0)
    await make_job(store, "j_in_time", 60.0)
    routed = await store.apply_routed(
        [provider_failed("j_late"), provider_failed("j_in_time")], world.fallback.reroute
    )
    # In time, the job moves on to b; past its deadline, it fails and nobody else tries.
    assert [j.id for j in routed.redispatch] == ["j_in_time"]
    late, moved = routed.events
    assert moved.state == job_pb2.JOB_STATE_PROCESSING and moved.provider == "b"
    assert late.state == job_pb2.JOB_STATE_FAILED
    assert (late.error.code, late.error.kind) == (DEADLINE_EXCEEDED, job_pb2.ERROR_KIND_FATAL)
    assert late.error.message == (
        "the job's deadline passed: no time left to fall back after HTTP 503 from a"
    )
    stored = await store.get("t", "j_late")
    assert stored is not None
    # The attempt keeps what the provider said (and so counts against it).
    assert [(a.provider, a.error.code) for a in stored.attempts] == [("a", "server_error")]
