"""The worker runtime: pull jobs for one provider, run them concurrently, report outcomes.

Broker verbs follow the outcome: ack once the outcome event is stored in JetStream;
nak with a delay for a retryable failure; in_progress on a timer while a job runs, so
only a dead worker's jobs are redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from genmesh.v1 import bus_pb2, job_pb2, provider_service_pb2
from services.common.bus import Bus
from services.common.cancelling import cancel_tasks
from services.common.errors import InvalidArgument
from services.common.parameters import ParameterRules, struct_to_dict
from services.common.pulling import PullConsumer, hand_back
from services.providers.adapter import Adapter, ProviderError
from services.providers.budget import Budget, DeadlineExceeded, declare_limits, provider_at_fault
from services.providers.cancelled import CancelledJobs
from services.providers.context import RunContext
from services.providers.drafts import Drafts
from services.providers.events import LINGER, PROGRESS_LINGER, EventPublisher
from services.providers.outputs import require_output
from services.storage.client import AssetClient

log = logging.getLogger(__name__)

FETCH_BATCH = 256
# Seconds a stopping worker spends telling that it hands a job back, at most.
HAND_BACK_NOTE_TIMEOUT = 2.0
# Seconds one fetch waits for a job before the loop looks again (stopping ends it at once).
FETCH_WAIT = 1.0


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 1000
    ack_wait: float = 30.0
    max_deliver: int = 5
    drain_timeout: float = 10.0
    # Seconds one attempt may take unless the job sets its own; 0: no limit.
    attempt_timeout: float = 0.0
    # Seconds events are held back to travel together (see EventPublisher): a change of
    # state, and progress that changes none.
    event_linger: float = LINGER
    progress_linger: float = PROGRESS_LINGER


@dataclass
class _Running:
    task: asyncio.Task[None]
    cancel_reason: str = ""


@dataclass
class Shared:
    """Connections every job handler uses."""

    nc: Client
    js: JetStreamContext
    bus: Bus
    assets: AssetClient
    cancelled: CancelledJobs
    requests: KeyValue
    worker_id: str


class ProviderWorker:
    """Serves one provider instance from its durable consumer, shared with other workers."""

    def __init__(
        self,
        adapter: Adapter,
        shared: Shared,
        options: WorkerOptions,
        drafts: Drafts | None = None,
    ) -> None:
        self.adapter = adapter
        self._shared = shared
        self._options = options
        self._drafts = drafts or Drafts({})
        self._description = adapter.describe()
        self._rules_by_task: dict[int, ParameterRules] = {}
        declare_limits(self._description, options.max_deliver, options.attempt_timeout)
        self._running: dict[str, _Running] = {}
        self._slots = asyncio.Semaphore(options.concurrency)
        self._active = 0
        self._stopping = asyncio.Event()
        self._jobs: PullConsumer | None = None
        # Recent provider calls: True when the provider held up its side.
        self._outcomes: deque[bool] = deque(maxlen=RECENT_CALLS)
        # Ids of the jobs handed back unfinished while stopping, for the worker to name.
        self.handed_back: list[str] = []

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

    @property
    def recent_calls(self) -> int:
        return len(self._outcomes)

    @property
    def recent_error_rate(self) -> float:
        """Share of recent calls that failed on the provider's side."""
        if not self._outcomes:
            return 0.0
        return self._outcomes.count(False) / len(self._outcomes)

    def description(self) -> provider_service_pb2.Provider:
        return self._description

    async def open(self) -> PullConsumer:
        """Create the instance's durable consumer unless it exists. Done before the worker
        announces itself: a router that finds a live worker but no consumer cannot tell how
        many jobs wait, and lets them all through its admission gate."""
        bus = self._shared.bus
        name = self.adapter.name
        jobs = PullConsumer(
            self._shared.nc, self._shared.js, bus.jobs_stream, bus.worker_consumer(name)
        )
        await jobs.start(
            bus.jobs_subject(name),
            ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._options.ack_wait,
                # The worker decides when a job has been tried enough (it must publish
                # FAILED), so the server never silently stops delivering one.
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        self._jobs = jobs
        return jobs

    async def run(self) -> None:
        """Fetch and start jobs until stop() is called."""
        jobs = self._jobs or await self.open()
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()
                free = 1 + self._free_slots()
                try:
                    msgs = await jobs.fetch(min(free, FETCH_BATCH), wait=FETCH_WAIT)
                except nats.errors.ConnectionClosedError:
                    self._slots.release()
                    return
                except Exception:
                    # A transient JetStream error must not stop this worker taking jobs.
                    self._slots.release()
                    log.warning("fetching jobs failed; retrying", exc_info=True)
                    await asyncio.sleep(0.5)
                    continue
                if not msgs:
                    self._slots.release()
                    continue
                # One slot is held already; take one more for each extra message.
                for i, msg in enumerate(msgs):
                    if i > 0:
                        await self._slots.acquire()
                    self._start(msg)
        finally:
            await jobs.close()

    def _free_slots(self) -> int:
        return self._options.concurrency - self._active - 1

    def _start(self, msg: Msg) -> None:
        self._active += 1
        task = asyncio.create_task(self._handle(msg))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._active -= 1
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            # The message stays unacked and is redelivered after ack_wait; say why.
            log.error("job handler failed", exc_info=task.exception())

    def stop_fetching(self) -> None:
        self._stopping.set()
        if self._jobs is not None:
            # Else a stopping worker waits out the fetch under way (a second) for nothing.
            self._jobs.interrupt()

    async def drain(self) -> None:
        """Wait for running jobs, then cancel what is left so it is redelivered elsewhere."""
        tasks = [r.task for r in self._running.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._options.drain_timeout)
            await cancel_tasks(pending)

    def cancel(self, job_id: str, reason: str) -> bool:
        """Stop a running job at the caller's request; True if it was running here."""
        running = self._running.get(job_id)
        if running is None:
            return False
        running.cancel_reason = reason or "cancelled"
        running.task.cancel()
        return True

    async def _handle(self, msg: Msg) -> None:
        dispatch = bus_pb2.JobDispatch()
        try:
            dispatch.ParseFromString(msg.data)
        except Exception:
            log.warning("dropping undecodable job message")
            await msg.term()
            return
        job = dispatch.job
        attempt = dispatch.attempt or 1
        delivery = msg.metadata.num_delivered or 1
        shared = self._shared
        events = EventPublisher(
            shared.js,
            shared.bus,
            job.id,
            attempt,
            shared.worker_id,
            self._options.event_linger,
            self._options.progress_linger,
            msg.reply,
            self._options.ack_wait,
        )
        if job.id in self._shared.cancelled:
            await msg.ack()
            return
        budget = Budget.of(job, self._options.attempt_timeout)
        if budget.expired():
            # Never started past the deadline: nobody is waiting for the result any more.
            reason = DeadlineExceeded("it passed before a worker could start the job")
            await events.publish(_failed(job, reason.code, reason.message, reason.kind))
            await msg.ack()
            return
        if delivery > self._options.max_deliver:
            await events.publish(
                _failed(
                    job,
                    "delivery_limit",
                    f"gave up after {delivery - 1} deliveries",
                    job_pb2.ERROR_KIND_RETRYABLE,
                )
            )
            await msg.ack()
            return
        running = _Running(asyncio.current_task())  # type: ignore[arg-type]
        self._running[job.id] = running
        heartbeat = asyncio.create_task(self._heartbeat(msg, job.id))
        try:
            await self._execute(job, budget, attempt, delivery, events, msg)
        except asyncio.CancelledError:
            if running.cancel_reason:
                # The router already recorded CANCELLED; the message is done with.
                await msg.ack()
                return
            # Shutting down: hand the job straight back for another worker, saying so first
            # (briefly: NATS may be what is going away), so that routers and watchers know.
            self.handed_back.append(job.id)
            note = job_pb2.JobEvent(state=job_pb2.JOB_STATE_PROCESSING, provider=job.provider)
            note.progress.message = "the worker is stopping; the job goes back to the queue"
            with contextlib.suppress(Exception):
                async with asyncio.timeout(HAND_BACK_NOTE_TIMEOUT):
                    await events.hand_back(note)
            with contextlib.suppress(Exception):
                await hand_back(msg)
            raise
        finally:
            heartbeat.cancel()
            self._running.pop(job.id, None)

    async def _execute(
        self,
        job: job_pb2.Job,
        budget: Budget,
        attempt: int,
        delivery: int,
        events: EventPublisher,
        msg: Msg,
    ) -> None:
        provider = self.adapter.name
        started = job_pb2.JobEvent(state=job_pb2.JOB_STATE_PROCESSING, provider=provider)
        started.progress.message = (
            "started" if delivery == 1 else f"restarted (delivery {delivery})"
        )
        if delivery > 1:
            # The run starts over: watchers must not keep showing the last one's percent.
            started.progress.percent = 0
        await events.publish(started)
        try:
            parameters = self._rules(job.spec.task).validate(struct_to_dict(job.spec.parameters))
            ctx = RunContext(
                job=job,
                attempt=attempt,
                parameters=parameters,
                assets=self._shared.assets,
                events=events,
                requests=self._shared.requests,
            )
            async with budget.bound():
                if self._drafts.wanted(job, delivery):
                    await self._drafts.show(self.adapter, ctx)
                result = await self.adapter.run(ctx)
            require_output(job.spec.task, provider, result)
            self._outcomes.append(True)
            assets = await ctx.store_result(result)
        except InvalidArgument as exc:
            await events.publish(
                _failed(job, "invalid_parameter", exc.message, job_pb2.ERROR_KIND_INVALID_INPUT)
            )
            await msg.ack()
            return
        except ProviderError as exc:
            self._outcomes.append(not provider_at_fault(exc))
            if exc.kind == job_pb2.ERROR_KIND_RETRYABLE and delivery < self._options.max_deliver:
                delay = backoff(delivery, exc.retry_after)
                note = job_pb2.JobEvent(state=job_pb2.JOB_STATE_PROCESSING, provider=provider)
                note.progress.message = f"retrying in {delay:.1f}s: {exc.message}"
                # Stored before the nak: the next delivery's events must come after it, and
                # a router must know the message is no longer this run's to send on.
                await events.hand_back(note)
                await msg.nak(delay=delay)
                return
            message = exc.message
            if exc.kind == job_pb2.ERROR_KIND_RETRYABLE and delivery > 1:
                # Else a 1 s attempt_timeout that failed after 7 s reads as a mistake.
                message += f"; gave up after {delivery} tries"
            await events.publish(_failed(job, exc.code, message, exc.kind))
            await msg.ack()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._outcomes.append(False)
            log.exception("job %s failed unexpectedly in %s", job.id, provider)
            await events.publish(
                _failed(
                    job,
                    "internal",
                    f"{type(exc).__name__} in the {provider} adapter",
                    job_pb2.ERROR_KIND_FATAL,
                )
            )
            await msg.ack()
            return
        done = job_pb2.JobEvent(state=job_pb2.JOB_STATE_COMPLETED, provider=provider)
        done.assets.extend(assets)
        done.output_text = result.text
        await events.publish(done)
        await msg.ack()

    def _rules(self, task: job_pb2.Task.ValueType) -> ParameterRules:
        rules = self._rules_by_task.get(task)
        if rules is None:
            rules = self._rules_by_task[task] = ParameterRules(self._description, task)
        return rules

    async def _heartbeat(self, msg: Msg, job_id: str) -> None:
        interval = max(self._options.ack_wait / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()
            # A cancel broadcast can be missed during a reconnect; the KV entry cannot.
            if job_id in self._shared.cancelled:
                self.cancel(job_id, "cancelled")
                return


RECENT_CALLS = 100


def backoff(delivery: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never sooner than the provider asked."""
    ceiling = min(30.0, 0.5 * 2 ** (delivery - 1))
    delay = random.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)


def _failed(job: job_pb2.Job, code: str, message: str, kind: int) -> job_pb2.JobEvent:
    event = job_pb2.JobEvent(state=job_pb2.JOB_STATE_FAILED, provider=job.provider)
    event.error.code = code
    event.error.message = message
    event.error.kind = kind  # type: ignore[assignment]
    event.error.provider = job.provider
    return event


async def listen_for_cancels(
    nc: Client, bus: Bus, workers: list[ProviderWorker], cancelled: CancelledJobs
) -> Subscription:
    """Subscribe to the cancel broadcast; returns the subscription."""

    async def on_cancel(msg: Msg) -> None:
        request = bus_pb2.CancelRequest()
        with contextlib.suppress(Exception):
            request.ParseFromString(msg.data)
        if not request.job_id:
            return
        cancelled.add(request.job_id)
        for worker in workers:
            worker.cancel(request.job_id, request.reason)

    return await nc.subscribe(bus.cancel_subject, cb=on_cancel)
