"""Publishing a job's events to JetStream, de-duplicated by message id."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from genmesh.v1 import bus_pb2, job_pb2
from services.common.bus import Bus


class EventPublisher:
    """One per job delivery. Ids are "<job>:<attempt>:<delivery>:<n>" for progress and
    "<job>:<attempt>:end" for the outcome, so one attempt publishes at most one outcome.

    Progress goes out in order without holding up the job: each progress event is stored
    after the one before it, in the background. An outcome first waits for all of them.
    """

    def __init__(
        self, js: JetStreamContext, bus: Bus, job_id: str, attempt: int, delivery: int, worker: str
    ) -> None:
        self._js = js
        self._bus = bus
        self._job_id = job_id
        self._attempt = attempt
        self._delivery = delivery
        self._worker = worker
        self._count = 0
        self._chain: asyncio.Task[None] | None = None

    async def publish(self, event: job_pb2.JobEvent) -> None:
        """Send an event; an outcome returns once it and everything before it are stored."""
        event.job_id = self._job_id
        if not event.HasField("time"):
            event.time.GetCurrentTime()
        wrapper = bus_pb2.WorkerEvent(event=event, attempt=self._attempt, worker_id=self._worker)
        data = wrapper.SerializeToString()
        if event.state in _OUTCOMES:
            await self.flush()
            await self._send(data, f"{self._job_id}:{self._attempt}:end")
            return
        self._count += 1
        msg_id = f"{self._job_id}:{self._attempt}:{self._delivery}:{self._count}"
        chain = asyncio.create_task(self._send_after(self._chain, data, msg_id))
        # A failure is raised by flush(); a job abandoned before then must not log it.
        chain.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._chain = chain

    async def flush(self) -> None:
        """Wait until every event sent so far is stored; raises what storing one raised."""
        if self._chain is not None:
            await self._chain

    async def _send_after(
        self, before: asyncio.Task[None] | None, data: bytes, msg_id: str
    ) -> None:
        if before is not None:
            await before
        await self._send(data, msg_id)

    async def _send(self, data: bytes, msg_id: str) -> None:
        await self._js.publish(
            self._bus.events_subject(self._job_id),
            data,
            stream=self._bus.events_stream,
            headers={"Nats-Msg-Id": msg_id},
        )


_OUTCOMES = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
