"""The admission gate's ordering, aging, token bucket and queue bound, on a fake clock.

The end-to-end behaviour (real JetStream backlog, real workers) is in
tests/e2e/test_admission.py; here the queue depth and the publisher are plain recorders."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

import nats.errors
import pytest

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.errors import ResourceExhausted
from services.router.admission import (
    HIGH,
    LOW,
    NORMAL,
    RETRY_MAX,
    AdmissionGate,
    Held,
    HeldJobs,
    TokenBucket,
)
from tests.router.helpers import Clock


def job(job_id: str, priority: int = 0, provider: str = "p") -> job_pb2.Job:
    j = job_pb2.Job(id=job_id, provider=provider, state=job_pb2.JOB_STATE_QUEUED)
    j.spec.priority = priority  # type: ignore[assignment]
    return j


def held(job_id: str, priority: int, since: float) -> Held:
    return Held(job(job_id, priority), 1, priority, since)


def drain(jobs: HeldJobs) -> list[str]:
    out = []
    while (entry := jobs.pop()) is not None:
        out.append(entry.job.id)
    return out


class Published:
    """Records what the gate publishes, in order."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def dispatch(self, job: job_pb2.Job, attempt: int = 1) -> object:
        self.ids.append(job.id)
        return len(self.ids)


class Depths:
    """A queue whose depth the test sets; publishes count in like QueueDepths."""

    def __init__(self, depth: int | None = 0) -> None:
        self.depth_now = depth

    async def depth(self, provider: str) -> int | None:
        return self.depth_now

    def cached(self, provider: str) -> int | None:
        return self.depth_now

    def latest(self, provider: str) -> int | None:
        return self.depth_now

    def count_in(self, provider: str, job_id: str, seq: int | None = None) -> None:
        if self.depth_now is not None:
            self.depth_now += 1

    def observe(self, events: Iterable[job_pb2.JobEvent]) -> None:
        pass

    def on_drain(self, callback: Callable[[], None]) -> None:
        pass


def cancelled(job_id: str) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(job_id=job_id, state=job_pb2.JOB_STATE_CANCELLED, sequence=2)


def limits(rate: float = 0.0, max_queue: int = 0) -> provider_service_pb2.ProviderLimits:
    return provider_service_pb2.ProviderLimits(rate_per_second=rate, max_queue=max_queue)


def gate(
    clock: Clock,
    depths: Depths,
    lim: provider_service_pb2.ProviderLimits,
    backlog: int = 2,
    unsent: Callable[[Sequence[str]], Awaitable[set[str]]] | None = None,
    replicas: Callable[[], int] = lambda: 1,
) -> tuple[AdmissionGate, Published, list[str]]:
    published = Published()
    marked: list[str] = []

    async def mark(ids: Sequence[str]) -> None:
        marked.extend(ids)

    g = AdmissionGate(
        published,
        depths,
        lambda name: lim,
        mark,
        unsent,
        replicas=replicas,
        backlog=backlog,
        aging=30.0,
        clock=clock,
    )
    return g, published, marked


def test_highest_class_first_fifo_within_a_class() -> None:
    clock = Clock()
    jobs = HeldJobs(aging=30.0, clock=clock)
    for i, (name, priority) in enumerate(
        [("l1", LOW), ("n1", NORMAL), ("h1", HIGH), ("l2", LOW), ("h2", HIGH), ("n2", 0 or NORMAL)]
    ):
        jobs.push(held(name, priority, clock.now + i * 0.001))
    clock.now += 1
    assert len(jobs) == 6
    assert drain(jobs) == ["h1", "h2", "n1", "n2", "l1", "l2"]
    assert len(jobs) == 0


def test_waiting_promotes_a_class_per_aging_period_so_low_is_not_starved() -> None:
    clock = Clock()
    jobs = HeldJobs(aging=30.0, clock=clock)
    old_low = held("old-low", LOW, clock.now)
    jobs.push(old_low)
    clock.now += 29.9
    assert jobs.effective(old_low, clock.now) == LOW
    jobs.push(held("normal", NORMAL, clock.now))
    # Not yet promoted: the normal job goes first.
    assert jobs.pop().job.id == "normal"  # type: ignore[union-attr]
    jobs.push(held("normal-2", NORMAL, clock.now))
    clock.now += 0.2
    # 30 s waited: the low job is NORMAL now and older than the normal one.
    assert jobs.effective(old_low, clock.now) == NORMAL
    jobs.push(held("high", HIGH, clock.now))
    assert drain(jobs) == ["high", "old-low", "normal-2"]
    # Two periods make it HIGH: it passes fresh high-priority jobs, and it stops there.
    older = held("older-low", LOW, clock.now - 61)
    jobs.push(older)
    jobs.push(held("high-2", HIGH, clock.now))
    assert jobs.effective(older, clock.now) == HIGH
    assert jobs.effective(held("x", LOW, clock.now - 600), clock.now) == HIGH
    assert drain(jobs) == ["older-low", "high-2"]


def test_no_aging_when_disabled_and_dropped_jobs_are_skipped() -> None:
    clock = Clock()
    jobs = HeldJobs(aging=0.0, clock=clock)
    low = held("low", LOW, clock.now - 10_000)
    gone = held("gone", HIGH, clock.now)
    jobs.push(low)
    jobs.push(gone)
    jobs.push(held("normal", NORMAL, clock.now))
    jobs.drop(gone)
    jobs.drop(gone)
    assert len(jobs) == 2
    assert drain(jobs) == ["normal", "low"]


def test_token_bucket_allows_a_one_second_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(4.0, clock)
    assert [bucket.take() for _ in range(5)] == [True] * 4 + [False]
    assert bucket.wait() == pytest.approx(0.25)
    clock.now += 0.2
    assert not bucket.take()
    clock.now += 0.05
    assert bucket.take()
    # Idle time saves up at most the burst.
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 4
    slow = TokenBucket(0.5, clock)
    assert slow.burst == 1.0
    assert slow.take() and not slow.take()
    assert slow.wait() == pytest.approx(2.0)


async def test_fast_path_until_the_backlog_then_held_jobs_go_by_priority() -> None:
    clock = Clock()
    depths = Depths(0)
    g, published, _ = gate(clock, depths, limits(), backlog=2)
    for name, priority in [("a", NORMAL), ("b", NORMAL), ("low", LOW), ("high", HIGH)]:
        await g.dispatch(job(name, priority))
    # Two fit under the backlog; the rest wait in the gate.
    assert published.ids == ["a", "b"]
    assert await g.queued("p") == 4
    # While something is held, even a high-priority job waits its turn behind nothing.
    await g.dispatch(job("high-2", HIGH))
    assert published.ids == ["a", "b"]
    assert await g.release() is not None
    assert published.ids == ["a", "b"]
    depths.depth_now = 1  # one job left the queue
    await g.release()
    assert published.ids == ["a", "b", "high"]
    depths.depth_now = 0
    await g.release()
    assert published.ids == ["a", "b", "high", "high-2", "low"]
    assert await g.release() is None
    assert await g.queued("p") == 2


async def test_rate_limit_spreads_dispatches_over_time() -> None:
    clock = Clock()
    depths = Depths(0)
    g, published, _ = gate(clock, depths, limits(rate=2.0), backlog=100)
    for i in range(6):
        await g.dispatch(job(f"j{i}"))
    assert published.ids == ["j0", "j1"]
    wait = await g.release()
    assert wait == pytest.approx(0.5)
    clock.now += 0.5
    await g.release()
    assert published.ids == ["j0", "j1", "j2"]
    clock.now += 10
    await g.release()
    # The bucket holds one second's worth, not ten.
    assert published.ids == ["j0", "j1", "j2", "j3", "j4"]
    clock.now += 0.5
    assert await g.release() is None
    assert len(published.ids) == 6


async def test_a_replica_gets_its_share_of_the_rate_as_replicas_come_and_go() -> None:
    clock = Clock()
    alive = [2]
    g, published, _ = gate(
        clock, Depths(0), limits(rate=4.0), backlog=100, replicas=lambda: alive[0]
    )
    assert g.rate("p") == 2.0
    for i in range(8):
        await g.dispatch(job(f"j{i}"))
    # Half the rate: a one-second burst of two, then a job every half second.
    assert len(published.ids) == 2
    assert await g.release() == pytest.approx(0.5)
    clock.now += 0.5
    await g.release()
    assert len(published.ids) == 3
    # The other replica is gone: from now on this one earns the whole rate.
    alive[0] = 1
    assert g.rate("p") == 4.0
    assert await g.release() == pytest.approx(0.25)
    clock.now += 0.25
    await g.release()
    assert len(published.ids) == 4
    # Two more replicas join: a quarter of the rate, and the tokens saved up meanwhile shrink
    # to its burst (one).
    clock.now += 10
    alive[0] = 4
    assert await g.release() == pytest.approx(1.0)
    assert len(published.ids) == 5
    # No limit is no limit, however many replicas run.
    assert gate(clock, Depths(0), limits(), replicas=lambda: 3)[0].rate("p") == 0.0


async def test_queue_bound_counts_held_and_queued_jobs() -> None:
    clock = Clock()
    depths = Depths(1)
    lim = limits(max_queue=3)
    g, _, _ = gate(clock, depths, lim, backlog=2)
    provider = provider_service_pb2.Provider(name="p", limits=lim)
    assert await g.reserve(provider) == 2
    await g.dispatch(job("a"))  # queued: depth 2
    assert await g.reserve(provider) == 3
    await g.dispatch(job("b"))  # held: 2 + 1
    with pytest.raises(ResourceExhausted, match=r"provider p .*max_queue = 3.*retry later"):
        await g.reserve(provider)
    g.drop(cancelled("b"))
    assert await g.reserve(provider) == 3
    # Unbounded, and an unknown depth with nothing held gives no position.
    assert await gate(clock, Depths(None), limits())[0].reserve(provider) is None


async def test_jobs_found_at_start_are_held_in_priority_order_and_ended_ones_marked() -> None:
    clock = Clock()
    depths = Depths(0)
    g, published, marked = gate(clock, depths, limits(), backlog=1)
    found = [job("low", LOW), job("cancelled", HIGH), job("normal", NORMAL), job("high", HIGH)]
    found[1].state = job_pb2.JOB_STATE_CANCELLED
    for j in found:
        j.create_time.GetCurrentTime()
    assert await g.admit(found) == 4
    # Found again (another replica gone): held already, nothing taken over twice.
    assert await g.admit(found[2:]) == 0
    assert marked == ["cancelled"]
    assert published.ids == []
    await g.release()
    assert published.ids == ["high"]
    depths.depth_now = 0
    await g.release()
    depths.depth_now = 0
    await g.release()
    assert published.ids == ["high", "normal", "low"]


async def test_a_job_another_replica_sent_meanwhile_is_not_sent_again() -> None:
    """Replica B starts while A holds a job: B holds it too (it is stored unsent); whoever
    releases it first sends it, the other finds it sent and lets it go."""
    clock, depths = Clock(), Depths(depth=5)
    sent: set[str] = set()
    cancelled = {"j3"}

    async def unsent(ids: Sequence[str]) -> set[str]:
        return set(ids) - sent - cancelled

    a, sent_by_a, _ = gate(clock, depths, limits(), backlog=3, unsent=unsent)
    b, sent_by_b, _ = gate(clock, depths, limits(), backlog=3, unsent=unsent)
    for name in ("j1", "j2", "j3"):
        await a.dispatch(job(name))  # the queue is full: A holds them
    await b.admit([job("j1"), job("j2"), job("j3")])
    depths.depth_now = 0
    await a.release()
    sent.update(sent_by_a.ids)
    depths.depth_now = 0
    await b.release()
    assert sent_by_a.ids == ["j1", "j2"]
    assert sent_by_b.ids == []
    # Nothing is left held on either side.
    assert await a.queued("p") == await b.queued("p") == 0


class Flaky(Published):
    """A publisher whose NATS may be out of reach: then every publish times out, unsent."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.during: Callable[[], None] = lambda: None

    async def dispatch(self, job: job_pb2.Job, attempt: int = 1) -> object:
        self.during()
        if self.down:
            raise nats.errors.TimeoutError
        return await super().dispatch(job, attempt)


def flaky_gate(clock: Clock, backlog: int = 10) -> tuple[AdmissionGate, Flaky]:
    """A gate on a Flaky publisher; no queue depth is known, so queued() counts held jobs."""
    publisher = Flaky()

    async def mark(ids: Sequence[str]) -> None:
        pass

    g = AdmissionGate(
        publisher, Depths(None), lambda name: limits(), mark, backlog=backlog, clock=clock
    )
    return g, publisher


async def test_a_job_nats_does_not_confirm_is_held_and_sent_once_nats_answers() -> None:
    clock = Clock()
    g, publisher = flaky_gate(clock)
    publisher.down = True
    # Stored before it is dispatched: the caller is told it is queued, not an error.
    await g.dispatch(job("a"))
    assert publisher.ids == [] and await g.queued("p") == 1
    # While sending fails, later jobs (for any provider) join the held ones at once.
    await g.dispatch(job("b"))
    await g.dispatch(job("other", provider="q"))
    assert await g.queued("p") == 2 and await g.queued("q") == 1
    # Each failed try waits longer before the next, up to a few seconds: far inside
    # JetStream's two-minute duplicate window.
    delays = [g.retry_delay()]
    for _ in range(6):
        assert await g.release() == 0.0
        delays.append(g.retry_delay())
    assert delays == [0.5, 1.0, 2.0, 4.0, RETRY_MAX, RETRY_MAX, RETRY_MAX]
    assert publisher.ids == []
    publisher.down = False
    assert await g.release() is None
    assert sorted(publisher.ids) == ["a", "b", "other"]
    assert g.retry_delay() == 0.0
    assert await g.queued("p") == await g.queued("q") == 0
    # Back to publishing at once.
    await g.dispatch(job("c"))
    assert publisher.ids[-1] == "c"


async def test_a_job_nats_did_not_confirm_goes_again_first_whatever_the_room() -> None:
    depths = Depths(0)
    publisher = Flaky()

    async def mark(ids: Sequence[str]) -> None:
        pass

    g = AdmissionGate(publisher, depths, lambda name: limits(), mark, backlog=1, clock=Clock())
    publisher.down = True
    await g.dispatch(job("a"))  # there was room: tried, not confirmed
    publisher.down = False
    await g.dispatch(job("b"))
    # The queue is full now, perhaps with a copy of "a" in it. "a" goes again at once, while
    # JetStream can still tell the copy from a new job; "b" waits for room.
    depths.depth_now = 5
    await g.release()
    assert publisher.ids == ["a"]
    depths.depth_now = 0
    await g.release()
    assert publisher.ids == ["a", "b"]


async def test_unconfirmed_jobs_of_every_provider_go_first_and_one_failure_ends_a_pass() -> None:
    depths = Depths(100)
    publisher = Flaky()
    tries = 0

    def count() -> None:
        nonlocal tries
        tries += 1

    async def mark(ids: Sequence[str]) -> None:
        pass

    g = AdmissionGate(publisher, depths, lambda name: limits(), mark, backlog=10, clock=Clock())
    await g.dispatch(job("x", provider="p"))  # no room: held, first in the gate's order
    depths.depth_now = 0
    publisher.down = True
    await g.dispatch(job("a", provider="q"))  # room: tried, not confirmed
    publisher.during = count
    # While NATS is out of reach a pass stops at its first failure: the unconfirmed job.
    assert await g.release() == 0.0
    assert tries == 1
    publisher.down = False
    await g.release()
    # "a" may be in JetStream already: it goes before "x", whose provider comes first.
    assert publisher.ids == ["a", "x"]


async def test_a_provider_whose_job_nats_refuses_does_not_hold_up_the_others() -> None:
    class RefusingOne(Published):
        async def dispatch(self, job: job_pb2.Job, attempt: int = 1) -> object:
            if job.id == "big":
                raise nats.errors.MaxPayloadError
            return await super().dispatch(job, attempt)

    async def mark(ids: Sequence[str]) -> None:
        pass

    depths = Depths(100)
    publisher = RefusingOne()
    g = AdmissionGate(publisher, depths, lambda name: limits(), mark, backlog=10, clock=Clock())
    await g.dispatch(job("big", provider="p"))  # no room: held, first in the gate's order
    await g.dispatch(job("x", provider="q"))
    depths.depth_now = 0
    await g.release()
    assert publisher.ids == ["x"]


async def test_a_held_job_cancelled_while_its_publish_fails_is_not_sent() -> None:
    clock = Clock()
    g, publisher = flaky_gate(clock)
    publisher.down = True
    await g.dispatch(job("a"))
    await g.dispatch(job("b"))
    # Cancelled while the gate is trying to send it.
    publisher.during = lambda: g.drop(cancelled("a"))
    await g.release()
    publisher.during = lambda: None
    assert await g.queued("p") == 1
    publisher.down = False
    assert await g.release() is None
    assert publisher.ids == ["b"]
    assert await g.queued("p") == 0
    # Cancelled while a publish that gets through is under way: it counts as held no more.
    await g.dispatch(job("c"))  # goes out at once
    publisher.down = True
    for name in ("d", "e"):
        await g.dispatch(job(name))
    publisher.down = False
    publisher.during = lambda: g.drop(cancelled("d"))
    assert await g.release() is None
    assert await g.queued("p") == 0
    assert publisher.ids[-1] == "e"


async def test_a_publish_nats_refuses_for_good_still_fails_the_call() -> None:
    class Refusing(Published):
        async def dispatch(self, job: job_pb2.Job, attempt: int = 1) -> object:
            raise nats.errors.MaxPayloadError

    async def mark(ids: Sequence[str]) -> None:
        pass

    g = AdmissionGate(Refusing(), Depths(0), lambda name: limits(), mark, clock=Clock())
    with pytest.raises(nats.errors.MaxPayloadError):
        await g.dispatch(job("a"))
    assert await g.queued("p") == 0


async def test_with_the_store_out_of_reach_health_counts_this_replicas_held_jobs() -> None:
    """With other replicas alive, held jobs are counted from the store; when it does not
    answer, health still shows this replica's (an estimate), while a queue bound fails."""

    async def unsent_count(provider: str) -> int:
        raise ConnectionError("database out of reach")

    async def mark(ids: Sequence[str]) -> None:
        return None

    bounded = provider_service_pb2.Provider(name="p", limits=limits(max_queue=5))
    g = AdmissionGate(
        Published(),
        Depths(0),
        lambda name: bounded.limits,
        mark_done=mark,
        unsent_count=unsent_count,
        replicas=lambda: 2,
        backlog=1,
        clock=Clock(),
    )
    await g.dispatch(job("a"))
    await g.dispatch(job("b"))  # past the backlog: held here
    assert await g.queued("p") == 1 + 1  # one held here, one in JetStream
    # A queue bound needs the count across replicas: no guessing there.
    with pytest.raises(ConnectionError):
        await g.reserve(bounded)
