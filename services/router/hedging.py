"""Hedging: a job silent for too long gets a second attempt on the next candidate; the
first of the two to complete wins and the other is cancelled.

The watchdog is per router replica and in memory. It watches the jobs this replica
created (and, after a restart or when another replica has gone, every unfinished job in the
store) and hears of progress from this replica's recorder. Replicas share the recorder, so
before hedging it checks the job's newest event time in the store: progress another replica
recorded counts too.
At most one hedge per job, and only where fallback could go (never a STRICT provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from genmesh.v1 import job_pb2
from services.common.clock import stamp
from services.common.parameters import dict_to_struct
from services.router import attempts
from services.router.fallback import Fallback
from services.router.store import JobStore, Routed
from services.router.transitions import TERMINAL
from services.router.watch import WatchHub

log = logging.getLogger(__name__)

# Tells the workers running a job to stop it: (job id, reason).
StopWorkers = Callable[[str, str], Awaitable[None]]


def hedge_after(spec: job_pb2.JobSpec, default: float) -> float:
    """Seconds of silence before the job is hedged; 0 or less: never."""
    if spec.HasField("hedge_after"):
        return spec.hedge_after.ToNanoseconds() / 1e9
    return default


@dataclass
class _Watch:
    after: float
    # Wall-clock time of the newest progress heard (events carry wall-clock times).
    last: float


class Hedger:
    """Knows when each hedge-eligible job last showed progress; hedges the silent ones."""

    def __init__(
        self,
        store: JobStore,
        fallback: Fallback,
        hub: WatchHub,
        stop_workers: StopWorkers,
        default_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._fallback = fallback
        self._hub = hub
        self._stop_workers = stop_workers
        self._default_after = default_after
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        # (due time, job id); one entry per watched job.
        self._due: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._rescan = asyncio.Event()

    def track(self, job: job_pb2.Job) -> None:
        """Start watching a job, if it can be hedged: a hedge_after, a running attempt and
        a candidate to hedge on."""
        after = hedge_after(job.spec, self._default_after)
        if (
            after <= 0
            or job.id in self._watches
            or job.state in TERMINAL
            or _sole_unhedged(job) is None
            or self._fallback.next_choice(job) is None
        ):
            return
        last = job.update_time.ToNanoseconds() / 1e9 or self._clock()
        self._watches[job.id] = _Watch(after, last)
        heapq.heappush(self._due, (last + after, job.id))
        self._wake.set()

    async def settle(self, routed: Routed) -> None:
        """After the recorder applied a batch: note progress, stop the hedges' losers."""
        now = self._clock()
        for event in routed.events:
            watch = self._watches.get(event.job_id)
            if watch is None:
                continue
            if event.state in TERMINAL:
                del self._watches[event.job_id]
            else:
                watch.last = now
        for job_id, reason in routed.stop:
            try:
                await self._stop_workers(job_id, reason)
            except Exception:
                # The loser runs on to its end, and its outcome is dropped as the job's is set.
                log.exception("could not tell the workers of job %s to stop", job_id)

    def take_over(self) -> None:
        """Another router replica has gone, and with it the watches it kept: watch every
        unfinished job again (those watched here already stay as they are)."""
        self._rescan.set()
        self._wake.set()

    async def run(self) -> None:
        """Rebuild the watch list from the store, then hedge jobs as they fall silent."""
        self._rescan.set()
        while True:
            # Cleared before the work, not after it: a take_over() that comes while a scan or
            # a hedge awaits the store leaves the wake set, so the wait below ends at once.
            self._wake.clear()
            if self._rescan.is_set():
                self._rescan.clear()
                await self._watch_unfinished()
            while self._due and self._due[0][0] <= self._clock():
                _, job_id = heapq.heappop(self._due)
                await self._check(job_id)
            delay = self._due[0][0] - self._clock() if self._due else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _watch_unfinished(self) -> None:
        try:
            async for job in self._store.unfinished():
                self.track(job)
        except Exception:
            # Only the jobs created from now on are watched; the rest run unhedged.
            log.exception("could not read unfinished jobs to watch for hedging")

    async def _check(self, job_id: str) -> None:
        watch = self._watches.get(job_id)
        if watch is None:
            return
        due = watch.last + watch.after
        if due > self._clock():
            heapq.heappush(self._due, (due, job_id))
            return
        try:
            await self._hedge(job_id, watch)
        except Exception:
            log.exception("could not hedge job %s; will try again", job_id)
            heapq.heappush(self._due, (self._clock() + watch.after, job_id))

    async def _hedge(self, job_id: str, watch: _Watch) -> None:
        heard: list[float] = []

        def start(job: job_pb2.Job) -> job_pb2.JobEvent | None:
            # The store is the truth: progress recorded by another replica counts too.
            last = job.update_time.ToNanoseconds() / 1e9
            if last + watch.after > self._clock():
                heard.append(last)
                return None
            return self._open_hedge(job, watch.after)

        routed = await self._store.start_attempt(job_id, start)
        if heard:
            watch.last = max(watch.last, heard[0])
            heapq.heappush(self._due, (watch.last + watch.after, job_id))
            return
        self._watches.pop(job_id, None)
        if routed.redispatch:
            await self._fallback.settle(routed)
            await self._hub.publish(routed.events)

    def _open_hedge(self, job: job_pb2.Job, after: float) -> job_pb2.JobEvent | None:
        """Open the hedge attempt on the job; returns the event that says so, or None when
        the job cannot be hedged (any more)."""
        running = _sole_unhedged(job)
        if running is None:
            return None
        choice = self._fallback.next_choice(job)
        if choice is None:
            return None
        source = running.provider
        name = choice.provider.name
        note = f"hedging: no progress from {source} for {after:g}s; starting {name} beside it"
        now = job_pb2.JobEvent(state=attempts.note_state(job), provider=name)
        stamp(now.time)
        now.progress.message = note
        attempts.open_attempt(job, choice.provider, note, now.time, hedge=True)
        # The dispatched job carries the hedge's parameters; the running attempt has its own.
        job.spec.parameters.CopyFrom(dict_to_struct(choice.parameters))
        return now


def _sole_unhedged(job: job_pb2.Job) -> job_pb2.Attempt | None:
    """The job's one running attempt, if it has exactly one and was never hedged."""
    running = [a for a in job.attempts if a.outcome == job_pb2.ATTEMPT_OUTCOME_RUNNING]
    if len(running) != 1 or any(a.hedge for a in job.attempts):
        return None
    return running[0]
