"""Publishing a job's events to JetStream, de-duplicated by message id."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from nats.js import JetStreamContext

from genmesh.v1 import bus_pb2, job_pb2
from services.common.backoff import patiently
from services.common.bus import UNCONFIRMED, Bus
from services.common.clock import stamp

# Seconds a change of state (PROCESSING, PREVIEW_READY) is held back before it is
# published, so a job that ends within it sends it and its outcome as one message: one
# publish, one delivery, one apply.
LINGER = 0.02
# Seconds progress that changes no state is held back: a provider reporting every few
# milliseconds sends a message a quarter second, not one per report. Every report still
# reaches the watchers, in order; they see them in bunches. Per-message costs (publish,
# store, fetch, ack, lock) are most of what an event costs the mesh.
PROGRESS_LINGER = 0.25
# Seconds a message is published again while NATS does not answer it (a restarted server, a
# leader election), at most: its id makes a copy stored meanwhile harmless within the events
# stream's two-minute duplicate window. Past them, or the worker's ack wait if shorter, the
# run fails and its job goes again after the ack wait, as it would from JetStream's side.
PUBLISH_PATIENCE = 90.0


class EventPublisher:
    """One per job delivery. Message ids are "<job>:<attempt>:<delivery_id>:<n>" for
    progress and "<job>:<attempt>:end" for the outcome, so one attempt publishes at most one
    outcome.

    `delivery_id` is random rather than JetStream's delivery count: a re-run's progress
    must never share an id with an earlier run's within the stream's duplicate window, and
    that count has been seen to come back as 1 on a redelivery. Every message carries it as
    its run_id, with its index in this run (1, 2, ...), so the router can apply the run's
    messages in the order they were published, whichever router replica gets which, and
    the job message's reply subject, so a router that finds this worker gone can send the
    job on at once (services.router.lost_workers).

    Progress goes out in order without holding up the job: a background sender publishes
    what has gathered after `linger` seconds when it changes the job's state, else after
    `progress_linger`, one message at a time. An outcome takes whatever progress is still
    unsent along with it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        bus: Bus,
        job_id: str,
        attempt: int,
        worker: str,
        linger: float = LINGER,
        progress_linger: float = PROGRESS_LINGER,
        delivery: str = "",
        ack_wait: float = 30.0,
    ) -> None:
        self._js = js
        self._ack_wait = ack_wait
        # Past the stream's duplicate window a second copy would be stored, for the run
        # ordering alone to drop.
        self._patience = min(ack_wait, PUBLISH_PATIENCE)
        self._bus = bus
        self._job_id = job_id
        self._attempt = attempt
        self.delivery_id = secrets.token_hex(6)
        self._worker = worker
        self._delivery = delivery
        self._linger = linger
        self._progress_linger = max(linger, progress_linger)
        # The state of the newest event handed in: one in another state is a change.
        self._state: job_pb2.JobState.ValueType = job_pb2.JOB_STATE_UNSPECIFIED
        self._count = 0
        self._pending: list[job_pb2.JobEvent] = []
        self._sender: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()
        # While flush() waits, each message goes out at once.
        self._flushing = False
        # Set by an outcome: the sender stops after its current message; the outcome
        # carries the rest.
        self._ending = False

    async def publish(self, event: job_pb2.JobEvent) -> None:
        """Send an event; an outcome returns once it and everything before it are stored."""
        self._stamp(event)
        if event.state in _OUTCOMES:
            # One id per attempt: only one run's outcome is stored.
            await self._send_last(event, f"{self._job_id}:{self._attempt}:end")
            return
        self._pending.append(event)
        # Progress reported after a preview leaves the job PREVIEW_READY (as the router
        # applies it), so it is only progress.
        state = event.state
        if state == job_pb2.JOB_STATE_PROCESSING and self._state == job_pb2.JOB_STATE_PREVIEW_READY:
            state = self._state
        # A new state (PROCESSING, PREVIEW_READY) or a new preview is news for watchers.
        if state != self._state or event.HasField("preview"):
            self._state = state
            # Hurried after the short linger, whichever linger the sender is waiting out; a
            # hurry left over for a later sender only sends its progress early.
            asyncio.get_running_loop().call_later(self._linger, self._hurry.set)
        sender = self._sender
        if sender is None or (sender.done() and (sender.cancelled() or not sender.exception())):
            # A failed sender is kept, so flush() raises its error; what gathers meanwhile
            # stays unsent, as the job cannot end well anyway.
            self._hurry.clear()
            sender = asyncio.create_task(self._send_later())
            # A failure is raised by flush(); a job abandoned before then must not log it.
            sender.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._sender = sender

    async def hand_back(self, note: job_pb2.JobEvent) -> None:
        """Send the run's last message, `note` (the job goes back to the queue), marked as
        handed back; returns once it and everything before it are stored."""
        note.handed_back = True
        self._stamp(note)
        await self._send_last(note, "", handed_back=True)

    def _stamp(self, event: job_pb2.JobEvent) -> None:
        event.job_id = self._job_id
        if not event.HasField("time"):
            stamp(event.time)

    async def _send_last(
        self, event: job_pb2.JobEvent, msg_id: str, *, handed_back: bool = False
    ) -> None:
        """Send what is held back with `event`, the run's last message (under `msg_id`, or
        its place in the run); the sender stops."""
        self._ending = True
        await self.flush()
        events, self._pending = [*self._pending, event], []
        self._count += 1
        await self._send(events, msg_id or self._msg_id(), handed_back=handed_back)

    async def flush(self) -> None:
        """Publish held-back progress now and wait until it is stored; raises what storing
        it raised."""
        if self._sender is None or self._sender.cancelled():
            return
        self._flushing = True
        self._hurry.set()
        try:
            await self._sender
        finally:
            self._flushing = False

    async def _send_later(self) -> None:
        while self._pending and not self._ending:
            # Each message waits out its linger, including progress reported while the one
            # before it was being stored: sent straight after it, a provider reporting faster
            # than a publish takes sent a message per report or two.
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._progress_linger):
                    await self._hurry.wait()
            if self._ending:
                return  # the outcome takes what is pending
            if not self._flushing:
                self._hurry.clear()
            events, self._pending = self._pending, []
            self._count += 1
            await self._send(events, self._msg_id())

    def _msg_id(self) -> str:
        return f"{self._job_id}:{self._attempt}:{self.delivery_id}:{self._count}"

    async def _send(
        self, events: list[job_pb2.JobEvent], msg_id: str, *, handed_back: bool = False
    ) -> None:
        wrapper = bus_pb2.WorkerEvent(
            events=events,
            attempt=self._attempt,
            worker_id=self._worker,
            run_id=self.delivery_id,
            index=self._count,
            delivery=self._delivery,
            handed_back=handed_back,
            ack_wait=self._ack_wait,
        )
        data = wrapper.SerializeToString()
        await patiently(
            lambda: self._js.publish(
                self._bus.events_subject(self._job_id),
                data,
                stream=self._bus.events_stream,
                headers={"Nats-Msg-Id": msg_id},
            ),
            lambda exc: isinstance(exc, UNCONFIRMED),
            patience=self._patience,
            first=0.25,
            most=2.0,
        )


_OUTCOMES = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
