"""Hedging between the watchdog, the store and the dispatcher, on a real database and a real
JetStream: a silent job gets a second attempt, events from both attempts apply, the first
completion wins and the loser is cancelled (and released, not failed), and a failing hedge
attempt does not fail the job."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
from nats.js.errors import KeyNotFoundError

from genmesh.v1 import bus_pb2, job_pb2, provider_service_pb2
from services.router.hedging import Hedger
from services.router.stopping import WorkerStopper
from services.router.store import Incoming
from services.router.watch import WatchHub
from tests.infra import eventually
from tests.router.helpers import IMAGE, World, created, worker_event

RUNNING = job_pb2.ATTEMPT_OUTCOME_RUNNING
SUCCEEDED = job_pb2.ATTEMPT_OUTCOME_SUCCEEDED
CANCELLED = job_pb2.ATTEMPT_OUTCOME_CANCELLED
FAILED = job_pb2.ATTEMPT_OUTCOME_FAILED
PROCESSING = job_pb2.JOB_STATE_PROCESSING
COMPLETED = job_pb2.JOB_STATE_COMPLETED
JOB = "j_fallback"


@dataclass
class Hedging:
    world: World
    hedger: Hedger
    cancellations: nats.js.kv.KeyValue
    hub: WatchHub

    async def job(self) -> job_pb2.Job:
        job = await self.world.store.get("t", JOB)
        assert job is not None
        return job


@pytest.fixture
async def h(world: World, nats_url: str) -> AsyncIterator[Hedging]:
    nc = await nats.connect(nats_url)
    try:
        cancellations = await world.bus.cancellations_kv(world.js)
        hub = WatchHub(nc, world.bus)
        hedger = Hedger(
            world.store,
            world.fallback,
            hub,
            WorkerStopper(nc, world.bus, cancellations).stop,
            default_after=0.3,
        )
        yield Hedging(world, hedger, cancellations, hub)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def watchdog(hedger: Hedger) -> AsyncIterator[None]:
    task = asyncio.create_task(hedger.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def hedged(h: Hedging) -> job_pb2.Job:
    """Wait until the watchdog has opened the hedge attempt and is done with it; the job as
    stored then. The hedge is stored, then dispatched, then announced: stopping the
    watchdog as soon as the store shows it could cut its dispatch short."""
    with h.hub.listen(JOB) as listener:
        async with asyncio.timeout(10):
            while True:
                event = await listener.next(10)
                if event is not None and event.progress.message.startswith("hedging:"):
                    break
    job = await h.job()
    assert len(job.attempts) == 2
    return job


async def test_silent_job_is_hedged_and_the_first_completion_wins(h: Hedging) -> None:
    store, fallback, breakers = h.world.store, h.world.fallback, h.world.breakers
    await created(store)
    await store.apply([worker_event(PROCESSING, 1, attempt=1)])
    # Started after the job exists: the watchdog finds it in the store.
    async with watchdog(h.hedger):
        job = await hedged(h)

    first, second = job.attempts
    assert (first.attempt, first.provider, first.outcome, first.hedge) == (1, "a", RUNNING, False)
    assert (second.attempt, second.provider, second.outcome, second.hedge) == (
        2,
        "b",
        RUNNING,
        True,
    )
    assert second.reason == "hedging: no progress from a for 0.3s; starting b beside it"
    assert second.cost_usd == 0.02
    assert job.state == PROCESSING
    # Dispatched as attempt 2, to b, and marked so.
    msg = await h.world.js.get_last_msg(h.world.bus.jobs_stream, h.world.bus.jobs_subject("b"))
    assert msg.data is not None
    dispatch = bus_pb2.JobDispatch.FromString(msg.data)
    assert (dispatch.attempt, dispatch.job.provider) == (2, "b")
    await h.world.dispatcher.stop()
    assert await store.undispatched() == []

    # Both attempts are heard while both run.
    both = await store.apply(
        [worker_event(PROCESSING, 2, attempt=1), worker_event(PROCESSING, 3, attempt=2)]
    )
    assert [e.sequence for e in both] == [4, 5]

    # b completes first: the job completes, a's attempt is cancelled and its worker told.
    routed = await store.apply_routed([_completed(4, attempt=2, provider="b")], fallback.reroute)
    await fallback.settle(routed)
    await h.hedger.settle(routed)
    assert [e.state for e in routed.events] == [COMPLETED]
    assert routed.stop == [(JOB, "lost the hedge to b")]
    job = await h.job()
    assert (job.state, job.provider) == (COMPLETED, "b")
    first, second = job.attempts
    assert (first.outcome, first.error.code, first.error.message) == (
        CANCELLED,
        "lost_hedge",
        "lost the hedge to b",
    )
    assert second.outcome == SUCCEEDED
    for attempt in job.attempts:
        assert attempt.end_time.ToNanoseconds() >= attempt.start_time.ToNanoseconds() > 0
    entry = await h.cancellations.get(JOB)
    assert entry.value is not None
    assert bus_pb2.CancelRequest.FromString(entry.value).reason == "lost the hedge to b"
    # The loser was released, not failed: one real failure now leaves a's circuit closed
    # (the threshold is 2), and only the winner's latency was measured.
    breakers.failed("a")
    assert breakers.state("a") == provider_service_pb2.CIRCUIT_STATE_CLOSED
    assert h.world.latency.average("b", IMAGE) is not None
    assert h.world.latency.average("a", IMAGE) is None

    # The loser finishing anyway changes nothing.
    late = await store.apply([_completed(5, attempt=1, provider="a")])
    assert late == []


async def test_a_failing_attempt_beside_a_running_one_does_not_fail_the_job(
    h: Hedging,
) -> None:
    store, fallback = h.world.store, h.world.fallback
    job = await created(store)
    h.hedger.track(job)
    async with watchdog(h.hedger):
        await hedged(h)

    routed = await store.apply_routed(
        [worker_event(job_pb2.JOB_STATE_FAILED, 1, 2, job_pb2.ERROR_KIND_RETRYABLE)],
        fallback.reroute,
    )
    [note] = routed.events
    assert note.state == PROCESSING
    assert note.progress.message == "attempt 2 failed (HTTP 503 from a); carrying on with a"
    assert routed.redispatch == []  # no fallback: a is still at it
    assert routed.stop == []
    job = await h.job()
    assert job.state == PROCESSING
    assert [(a.provider, a.outcome) for a in job.attempts] == [("a", RUNNING), ("b", FAILED)]

    routed = await store.apply_routed([_completed(2, attempt=1, provider="a")], fallback.reroute)
    assert routed.stop == []  # nobody else was running
    job = await h.job()
    assert (job.state, job.provider) == (COMPLETED, "a")
    assert [(a.provider, a.outcome) for a in job.attempts] == [("a", SUCCEEDED), ("b", FAILED)]
    with pytest.raises(KeyNotFoundError):
        await h.cancellations.get(JOB)


async def test_a_strict_or_busy_job_is_not_hedged(h: Hedging) -> None:
    store = h.world.store
    job = await created(store)
    # STRICT by default: the named provider's failure is the job's, so it never hedges.
    strict = job_pb2.Job()
    strict.CopyFrom(job)
    strict.id = "j_strict"
    strict.spec.provider = "a"
    first = job_pb2.JobEvent(job_id=strict.id, sequence=1, state=job_pb2.JOB_STATE_QUEUED)
    first.time.GetCurrentTime()
    await store.create(strict, "strict", first)
    h.hedger.track(strict)

    # Progress more often than hedge_after keeps a job on its one attempt.
    h.hedger.track(job)
    async with watchdog(h.hedger):
        for seq in range(1, 9):
            routed = await store.apply_routed([worker_event(PROCESSING, seq, attempt=1)])
            await h.hedger.settle(routed)
            await asyncio.sleep(0.1)
        assert len((await h.job()).attempts) == 1
        # Then silence: it is hedged; the strict job, as silent, is not.
        await hedged(h)
    stored = await store.get("t", "j_strict")
    assert stored is not None
    assert len(stored.attempts) == 1


def _completed(seq: int, attempt: int, provider: str) -> Incoming:
    incoming = worker_event(COMPLETED, seq, attempt=attempt)
    incoming.event.provider = provider
    return incoming


async def test_a_take_over_during_a_scan_is_not_lost(
    h: Hedging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica goes while the watchdog is reading the store: it reads again, rather
    than sleeping with the other replica's jobs unwatched."""
    store = h.world.store
    scans = 0
    in_scan, go_on = asyncio.Event(), asyncio.Event()
    unfinished = store.unfinished

    async def slow_unfinished() -> AsyncIterator[job_pb2.Job]:
        nonlocal scans
        scans += 1
        if scans == 1:
            in_scan.set()
            await go_on.wait()
        async for job in unfinished():
            yield job

    monkeypatch.setattr(store, "unfinished", slow_unfinished)
    async with watchdog(h.hedger):
        await asyncio.wait_for(in_scan.wait(), 5)
        h.hedger.take_over()
        go_on.set()
        await eventually(lambda: scans == 2, within=5)
