"""The admission gate: per provider instance, jobs past its queue watermark or its rate limit
wait in the router, highest priority first, instead of piling into JetStream in arrival order.

A held job is already stored and not yet marked dispatched, so a router that dies while
holding it loses nothing: the next start feeds it back through the gate.

A job whose publish NATS cannot confirm (the server down, stalled or reconnecting) is held
too, rather than failing a call whose job is already stored: the release loop sends it again,
backing off, once NATS answers, ahead of the other held jobs and whatever the queue's room or
rate tokens (it had both). If the first copy got through after all, JetStream drops the second
by its Nats-Msg-Id; the backoff stays far inside the stream's duplicate window (two minutes),
so a copy that arrives late is still recognised. (A NATS outage longer than that, with the
database out of reach as well once NATS is back, could still let a second copy through.)

A provider's rate limit holds for the mesh, however many router replicas run: each replica's
token bucket earns the rate divided by the replicas alive (services.router.replicas counts
them from heartbeats in NATS KV and keeps the count in memory, so no job waits on NATS for
it). The price of splitting evenly without talking per job:

- Replicas that get unequal shares of a provider's jobs together send fewer than its rate: a
  replica with no jobs for it leaves its share unused (one replica getting every job has 1/N
  of the rate). A balancer that spreads requests evenly keeps this small.
- A replica that dies still counts until its heartbeat lapses (GENMESH_ROUTER_LIVENESS;
  at once for one that stops cleanly), so the others under-use the rate meanwhile.
- A replica that starts counts the others at once; they count it when its first heartbeat
  reaches them (milliseconds on a healthy NATS), sending a little over the rate until then.
- Each bucket holds a second of its share but at least one token, so N replicas may burst
  up to max(rate, N) jobs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.backoff import doubling
from services.common.bus import UNCONFIRMED
from services.common.cancelling import cancel_task
from services.common.errors import ResourceExhausted
from services.router.attempts import current
from services.router.transitions import TERMINAL

log = logging.getLogger(__name__)

LOW, NORMAL, HIGH = job_pb2.PRIORITY_LOW, job_pb2.PRIORITY_NORMAL, job_pb2.PRIORITY_HIGH
# Seconds between looks at the queues while jobs are held (sooner when jobs are seen leaving).
POLL = 0.05
# Seconds before held jobs are sent again after a failed try, doubling per failed try up to
# RETRY_MAX: far inside JetStream's duplicate window, so that a copy which got through
# unconfirmed (or was buffered by the client until it reconnected) is dropped as a duplicate.
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
Clock = Callable[[], float]
Limits = provider_service_pb2.ProviderLimits


class Publisher(Protocol):
    async def dispatch(self, job: job_pb2.Job, attempt: int = 1) -> object: ...


class Depths(Protocol):
    """Estimated undelivered jobs per provider (services.router.queues.QueueDepths)."""

    async def depth(self, provider: str) -> int | None: ...
    def cached(self, provider: str) -> int | None: ...
    def latest(self, provider: str) -> int | None: ...
    def count_in(self, provider: str, job_id: str, seq: int | None = None) -> None: ...
    def observe(self, events: Iterable[job_pb2.JobEvent]) -> None: ...
    def on_drain(self, callback: Callable[[], None]) -> None: ...


def priority_class(job: job_pb2.Job) -> int:
    """The job's priority; unspecified is NORMAL."""
    return job.spec.priority or NORMAL


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up (one second's worth, at least one)."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._clock = clock
        self.rate = rate
        self._tokens = self.burst
        self._stamp = clock()

    @property
    def burst(self) -> float:
        return max(1.0, self.rate)

    def retune(self, rate: float) -> None:
        """Earn `rate` a second from now on; what was earned so far at the old rate stays,
        up to the new burst."""
        self._fill()
        self.rate = rate
        self._tokens = min(self._tokens, self.burst)

    def take(self) -> bool:
        """Spend a token if one is there."""
        self._fill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait(self) -> float:
        """Seconds until the next token."""
        self._fill()
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def _fill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now


@dataclass
class Held:
    job: job_pb2.Job
    attempt: int
    priority: int
    # Clock time the job started waiting.
    since: float
    dropped: bool = False
    # In its queue, as opposed to taken out by HeldJobs.pop() (being published).
    waiting: bool = False
    # Published without NATS confirming it: a copy may be in JetStream already.
    unconfirmed: bool = False


class HeldJobs:
    """One provider's held jobs: highest effective priority first, oldest first among equals.

    Effective priority is the job's class plus one per `aging` seconds waited (up to HIGH),
    so a low-priority job waits at most about two aging periods behind a stream of others."""

    def __init__(self, aging: float, clock: Clock) -> None:
        self._aging = aging
        self._clock = clock
        # Within a class, arrival order is waiting order, so each head is its class's best.
        self._classes: dict[int, deque[Held]] = {HIGH: deque(), NORMAL: deque(), LOW: deque()}
        # Jobs to send again: they had their room and token, and JetStream recognises a copy
        # that got through only within its duplicate window, so they wait for neither.
        self._unconfirmed: deque[Held] = deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def effective(self, held: Held, now: float) -> int:
        if self._aging <= 0:
            return held.priority
        return min(HIGH, held.priority + int((now - held.since) // self._aging))

    def push(self, held: Held) -> None:
        held.waiting = True
        (self._unconfirmed if held.unconfirmed else self._classes[held.priority]).append(held)
        self._count += 1

    def push_back_first(self, held: Held) -> None:
        """Return a job taken by pop() to the front of its class (its publish failed),
        unless it was dropped meanwhile."""
        if held.dropped:
            return
        held.waiting = True
        (self._unconfirmed if held.unconfirmed else self._classes[held.priority]).appendleft(held)
        self._count += 1

    def take_unconfirmed(self) -> list[Held]:
        """Every job whose publish was not confirmed, to send again now."""
        taken = [held for held in self._unconfirmed if not held.dropped]
        self._unconfirmed.clear()
        for held in taken:
            held.waiting = False
        self._count -= len(taken)
        return taken

    def drop(self, held: Held) -> None:
        """Forget a held job (cancelled); it is skipped when its turn comes."""
        if not held.dropped:
            held.dropped = True
            if held.waiting:
                self._count -= 1

    def pop(self) -> Held | None:
        now = self._clock()
        best: deque[Held] | None = None
        best_key = (0, 0.0)
        for queue in self._classes.values():
            while queue and queue[0].dropped:
                queue.popleft()
            if queue:
                head = queue[0]
                key = (self.effective(head, now), -head.since)
                if best is None or key > best_key:
                    best, best_key = queue, key
        if best is None:
            return None
        self._count -= 1
        entry = best.popleft()
        entry.waiting = False
        return entry


class AdmissionGate:
    """Dispatches a job at once when its provider has nothing held, fewer than `backlog` jobs
    waiting in JetStream and a rate token; otherwise holds it until those are true.

    Held jobs are per router replica; each replica's rate is its share of the provider's
    (`replicas` says how many replicas share it); the backlog is the shared JetStream queue,
    so replicas together keep about `backlog` jobs queued per provider."""

    def __init__(
        self,
        publisher: Publisher,
        depths: Depths,
        limits_of: Callable[[str], Limits | None],
        mark_done: Callable[[Sequence[str]], Awaitable[None]],
        unsent: Callable[[Sequence[str]], Awaitable[set[str]]] | None = None,
        unsent_count: Callable[[str], Awaitable[int]] | None = None,
        *,
        replicas: Callable[[], int] = lambda: 1,
        backlog: int = 32,
        aging: float = 30.0,
        clock: Clock = time.monotonic,
        poll: float = POLL,
    ) -> None:
        self._publisher = publisher
        self._depths = depths
        self._limits_of = limits_of
        self._mark_done = mark_done
        self._unsent = unsent
        self._unsent_count = unsent_count
        self._replicas = replicas
        self._backlog = max(1, backlog)
        self._aging = aging
        self._clock = clock
        self._poll = poll
        self._buckets: dict[str, TokenBucket] = {}
        self._held: dict[str, HeldJobs] = {}
        self._by_id: dict[str, tuple[HeldJobs, Held]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Tries in a row that failed to send held jobs (0: the last one did not fail).
        self._failures = 0
        depths.on_drain(self._wake.set)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._release_loop())

    async def stop(self) -> None:
        """Stop releasing; jobs still held stay stored as undispatched for the next start."""
        await cancel_task(self._task)

    # ---- submit path ----------------------------------------------------------------

    async def reserve(self, provider: provider_service_pb2.Provider, ahead: int = 0) -> int | None:
        """Before a job for `provider` is stored: its estimated queue position, or
        ResourceExhausted when the instance's queue bound (limits.max_queue) is reached.
        `ahead` counts jobs for it that the same call reserved before (a batch's earlier
        specs), which are not stored yet and so not seen waiting."""
        name = provider.name
        depth = await self._depths.depth(name)
        bound = provider.limits.max_queue
        # From the store when it matters: other replicas hold jobs for it too (counting only
        # this one's let N replicas queue N times the bound, and put a job behind theirs
        # at the front of the line), and a held job that ended while held (cancelled
        # elsewhere, past its deadline) stays in memory until its turn. Alone and unbounded,
        # memory is exact enough and costs no query per submit.
        held = await self._held_count(name, exact=bound > 0)
        waiting = held + (depth or 0) + ahead
        if 0 < bound <= waiting:
            raise ResourceExhausted(
                f"provider {name} has {waiting} job(s) waiting, its queue bound "
                f"(max_queue = {bound}); retry later or choose another provider"
            )
        if depth is None and not held and not ahead:
            return None
        return waiting + 1

    async def dispatch(self, job: job_pb2.Job, attempt: int = 1) -> None:
        """Publish the stored job now if its provider has room, else hold it.

        A publish NATS does not confirm holds the job as well, and so does a job that comes
        while held jobs cannot be sent: the job is stored, so it counts as accepted, and it
        goes out once NATS answers."""
        name = job.provider
        if (
            not self._failures
            and not self._held.get(name)
            and self._room(self._depths.cached(name)) > 0
        ):
            bucket = self._bucket(name)
            if bucket is None or bucket.take():
                try:
                    await self._publish(job, attempt)
                    return
                except UNCONFIRMED as exc:
                    log.warning("could not publish job %s (%r); holding it to retry", job.id, exc)
                    self._failures = max(self._failures, 1)
                    self._hold(job, attempt, self._clock(), unconfirmed=True)
                    return
        self._hold(job, attempt, self._clock())

    async def admit(self, jobs: list[job_pb2.Job]) -> int:
        """Take over jobs found stored but undispatched at start-up, or when another replica
        has gone: all are held, so the release loop sends them in priority order; their wait
        counts from creation. Returns how many were not held here already."""
        ended = []
        taken = 0
        now, wall = self._clock(), time.time()
        for job in jobs:
            if job.id in self._by_id:
                # Held here already (a replica gone is taken over while this one runs).
                continue
            if job.state in TERMINAL:
                # Cancelled while held: nothing to publish, ever.
                ended.append(job.id)
                continue
            waited = max(0.0, wall - job.create_time.ToNanoseconds() / 1e9)
            self._hold(job, current(job), now - waited)
            taken += 1
        if ended:
            await self._mark_done(ended)
        return taken + len(ended)

    def drop(self, cancelled: job_pb2.JobEvent) -> None:
        """A job was cancelled: held, it will not be published; published and not yet
        started, its message is taken out of the queue."""
        found = self._by_id.pop(cancelled.job_id, None)
        if found is not None:
            found[0].drop(found[1])
        self._depths.observe([cancelled])

    def rate(self, provider: str) -> float:
        """Jobs a second this replica may send `provider` (0: no limit): the provider's
        rate limit shared among the router replicas alive."""
        limits = self._limits_of(provider)
        rate = limits.rate_per_second if limits is not None else 0.0
        return rate / max(1, self._replicas()) if rate > 0 else 0.0

    async def queued(self, provider: str) -> int:
        """Jobs waiting for `provider`: held by the router replicas plus the estimated
        JetStream backlog."""
        return await self._held_count(provider) + (self._depths.latest(provider) or 0)

    async def _held_count(self, provider: str, *, exact: bool = False) -> int:
        """Jobs held back for `provider`: by every replica, from the store, when other
        replicas run (or `exact`); else this replica's own. Short of `exact`, a store out of
        reach gives this replica's own rather than an error: an estimate, as ever."""
        mine = len(self._held.get(provider, ()))
        if self._unsent_count is None or not (exact or self._replicas() > 1):
            return mine
        try:
            return await self._unsent_count(provider)
        except Exception:
            if exact:
                raise
            log.warning("could not count held jobs for %s; counting this replica's", provider)
            return mine

    # ---- release --------------------------------------------------------------------

    async def release(self) -> float | None:
        """Publish what each provider has room and tokens for; returns seconds until it is
        worth looking again (None: nothing held; 0 after a failed try, which the release
        loop follows with its backoff)."""
        # First whatever may already be in JetStream, every provider's, before any queue
        # depth is read or another job sent: its retry must stay inside the duplicate window.
        for held in list(self._held.values()):
            unpublished = await self._send(held.take_unconfirmed())
            if unpublished:
                for again in reversed(unpublished):
                    held.push_back_first(again)
                self._failures += 1
                return 0.0
        soonest: float | None = None
        failed = False
        for name, held in list(self._held.items()):
            if not held:
                del self._held[name]
                continue
            room = self._room(await self._depths.depth(name))
            bucket = self._bucket(name)
            taken: list[Held] = []
            while held and len(taken) < room:
                if bucket is not None and not bucket.take():
                    soonest = _min(soonest, max(bucket.wait(), 0.001))
                    break
                entry = held.pop()
                if entry is None:
                    break
                taken.append(entry)
            if held and len(taken) >= room:
                # Full: look again soon, or as soon as jobs are seen leaving the queue.
                soonest = _min(soonest, self._poll)
            unpublished = await self._send(taken)
            if unpublished:
                for entry in reversed(unpublished):
                    held.push_back_first(entry)
                failed = True
                soonest = 0.0
                if unpublished[0].unconfirmed:
                    # NATS out of reach for one provider is out of reach for all: the others
                    # would only wait out the same timeout, delaying the next retry. (Any
                    # other failure is this provider's: the others go on.)
                    break
        self._failures = self._failures + 1 if failed else 0
        return soonest

    def retry_delay(self) -> float:
        """Seconds to wait before trying again after the failed tries so far (0: none)."""
        return _backoff_after(self._failures)

    async def _release_loop(self) -> None:
        wait: float | None = 0.0
        while True:
            if wait is None or wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            if self._failures:
                # Sending failed (NATS down or stalled?): back off, however often woken.
                await asyncio.sleep(self.retry_delay())
            self._wake.clear()
            try:
                wait = await self.release()
            except Exception:
                log.exception("releasing held jobs failed; retrying")
                self._failures += 1
                wait = 0.0

    async def _send(self, taken: list[Held]) -> list[Held]:
        """Publish taken jobs in order, skipping any another router replica has sent
        meanwhile (one that started up holds every job it found unsent) or that has ended;
        returns those left unpublished by a failure."""
        if not taken:
            return []
        try:
            ids = [e.job.id for e in taken]
            unsent = set(ids) if self._unsent is None else await self._unsent(ids)
        except Exception as exc:
            log.warning("could not check which held jobs are unsent (%r); will retry", exc)
            return taken
        for i, entry in enumerate(taken):
            if entry.job.id in unsent and not entry.dropped:
                try:
                    await self._publish(entry.job, entry.attempt)
                except Exception as exc:
                    entry.unconfirmed = entry.unconfirmed or isinstance(exc, UNCONFIRMED)
                    log.warning(
                        "could not publish held job %s to %s (%r); will retry in %.1f s",
                        entry.job.id,
                        entry.job.provider,
                        exc,
                        _backoff_after(self._failures + 1),
                    )
                    return taken[i:]
            self._by_id.pop(entry.job.id, None)
        return []

    # ---- helpers --------------------------------------------------------------------

    def _hold(
        self, job: job_pb2.Job, attempt: int, since: float, *, unconfirmed: bool = False
    ) -> None:
        held = self._held.get(job.provider)
        if held is None:
            held = self._held[job.provider] = HeldJobs(self._aging, self._clock)
        entry = Held(job, attempt, priority_class(job), since, unconfirmed=unconfirmed)
        held.push(entry)
        self._by_id[job.id] = (held, entry)
        self._wake.set()

    async def _publish(self, job: job_pb2.Job, attempt: int) -> None:
        seq = await self._publisher.dispatch(job, attempt)
        self._depths.count_in(job.provider, job.id, seq if isinstance(seq, int) else None)

    def _room(self, depth: int | None) -> int:
        # An unknown depth (no worker has ever served the provider) counts as empty.
        return self._backlog - (depth or 0)

    def _bucket(self, name: str) -> TokenBucket | None:
        rate = self.rate(name)
        if rate <= 0:
            self._buckets.pop(name, None)
            return None
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = TokenBucket(rate, self._clock)
        elif bucket.rate != rate:
            bucket.retune(rate)
        return bucket


def _backoff_after(failures: int) -> float:
    return doubling(failures, RETRY_FIRST, RETRY_MAX)


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
