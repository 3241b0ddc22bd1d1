"""Publishing jobs to their provider's work queue, exactly once per attempt."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import nats.errors
from nats.js import JetStreamContext

from genmesh.v1 import bus_pb2, job_pb2
from services.common.backoff import doubling
from services.common.bus import Bus
from services.common.cancelling import cancel_tasks
from services.router.attempts import current
from services.router.store import JobStore

log = logging.getLogger(__name__)

# Takes over jobs found undispatched at start-up (the admission gate, which may hold some);
# returns how many it had not held already.
Admit = Callable[[list[job_pb2.Job]], Awaitable[int]]
# Seconds before a failed takeover is tried again, doubling up to TAKEOVER_RETRY_MAX.
TAKEOVER_RETRY_FIRST = 1.0
TAKEOVER_RETRY_MAX = 30.0


class Dispatcher:
    """Publishes with Nats-Msg-Id "<job>:<attempt>" so a republish is dropped by JetStream.

    A job is marked dispatched after JetStream acknowledged it; the marks are written in
    batches off the submit path. Jobs a dead router never marked are published again at
    start-up, which the message id makes harmless.
    """

    def __init__(
        self,
        js: JetStreamContext,
        bus: Bus,
        store: JobStore,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self._js = js
        self._connected = connected
        self._bus = bus
        self._store = store
        # Published, to be marked dispatched: (job id, provider).
        self._marks: list[tuple[str, str]] = []
        # Per provider, jobs published and not yet marked (queued marks and a flush under way).
        self._unmarked: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._admit: Admit | None = None
        self._takeover = asyncio.Event()
        self._taking_over: asyncio.Task[None] | None = None

    async def start(self, admit: Admit | None = None) -> None:
        self._admit = admit
        await self.redispatch_pending(admit)
        self._task = asyncio.create_task(self._mark_loop())
        self._taking_over = asyncio.create_task(self._takeover_loop())

    async def stop(self) -> None:
        await cancel_tasks([self._taking_over, self._task])
        await self._flush()

    def take_over_pending(self) -> None:
        """Another router replica has gone: what it held back (stored, never dispatched)
        would otherwise wait for the next router to start, which may be never when the
        replicas were scaled down. So go through the undispatched jobs again, as at start-up;
        the gate skips those it holds already and, before sending, any another live replica
        has sent meanwhile."""
        self._takeover.set()

    async def dispatch(self, job: job_pb2.Job, attempt: int = 1) -> int:
        """Publish and wait for JetStream's ack; returns the job's stream sequence.

        ConnectionReconnectingError at once while NATS is known to be out of reach: the
        publish would only wait out its timeout (5 s) before the caller holds the job."""
        if not self._connected():
            raise nats.errors.ConnectionReconnectingError
        # The attempt's own provider: while a hedge runs, job.provider follows whichever
        # attempt reported last.
        provider = next((a.provider for a in job.attempts if a.attempt == attempt), job.provider)
        message = bus_pb2.JobDispatch(job=job, attempt=attempt)
        message.job.provider = provider
        ack = await self._js.publish(
            self._bus.jobs_subject(provider),
            message.SerializeToString(),
            stream=self._bus.jobs_stream,
            headers={"Nats-Msg-Id": f"{job.id}:{attempt}"},
        )
        self._marks.append((job.id, provider))
        self._unmarked[provider] += 1
        self._wake.set()
        return int(ack.seq)

    async def unsent_count(self, provider: str) -> int:
        """Jobs for `provider` stored and not yet published by any router replica: held back
        by one. Those this replica has published but not yet marked are left out, as they
        are in the provider's JetStream queue already (another replica's for a moment are
        not: counted twice until marked)."""
        return max(0, await self._store.unsent_count(provider) - self._unmarked[provider])

    async def redispatch_pending(self, admit: Admit | None = None) -> None:
        """Publish the jobs stored but never marked dispatched, or hand them to `admit`
        (which may hold some back, so they stay unmarked: pages go by creation order)."""
        after: tuple[float, str] | None = None
        while True:
            pending = await self._store.undispatched(after=after if admit else None)
            if not pending:
                return
            if admit is not None:
                last = pending[-1]
                after = (last.create_time.ToNanoseconds() / 1e9, last.id)
                # Those this replica holds itself are stored undispatched too: not news.
                taken = await admit(pending)
                if taken:
                    log.info("taking over %d job(s) stored but not yet dispatched", taken)
            else:
                log.info("%d job(s) stored but not yet dispatched: publishing them", len(pending))
                for job in pending:
                    await self.dispatch(job, current(job))
            await self._flush()

    async def _takeover_loop(self) -> None:
        failures = 0
        while True:
            await self._takeover.wait()
            self._takeover.clear()
            try:
                await self.redispatch_pending(self._admit)
                failures = 0
            except Exception:
                failures += 1
                delay = doubling(failures, TAKEOVER_RETRY_FIRST, TAKEOVER_RETRY_MAX)
                log.exception("taking over undispatched jobs failed; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                self._takeover.set()

    async def _mark_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Exception:
                log.exception("could not mark jobs dispatched; will retry")
                await asyncio.sleep(1)
                self._wake.set()
            # Let a few more submits land so one UPDATE covers them.
            await asyncio.sleep(0.02)

    async def _flush(self) -> None:
        marks, self._marks = self._marks, []
        try:
            await self._store.mark_dispatched([job_id for job_id, _ in marks])
        except BaseException:
            self._marks.extend(marks)
            raise
        self._unmarked.subtract(provider for _, provider in marks)
