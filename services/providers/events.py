"""Publishing a job's events to JetStream, de-duplicated by message id."""

from __future__ import annotations

from nats.js import JetStreamContext

from genmesh.v1 import bus_pb2, job_pb2
from services.common.bus import Bus


class EventPublisher:
    """One per job delivery. Ids are "<job>:<attempt>:<delivery>:<n>" for progress and
    "<job>:<attempt>:end" for the outcome, so one attempt publishes at most one outcome."""

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

    async def publish(self, event: job_pb2.JobEvent) -> None:
        """Publish and wait until JetStream has stored it."""
        event.job_id = self._job_id
        if not event.HasField("time"):
            event.time.GetCurrentTime()
        if event.state in (
            job_pb2.JOB_STATE_COMPLETED,
            job_pb2.JOB_STATE_FAILED,
            job_pb2.JOB_STATE_CANCELLED,
        ):
            msg_id = f"{self._job_id}:{self._attempt}:end"
        else:
            self._count += 1
            msg_id = f"{self._job_id}:{self._attempt}:{self._delivery}:{self._count}"
        wrapper = bus_pb2.WorkerEvent(event=event, attempt=self._attempt, worker_id=self._worker)
        await self._js.publish(
            self._bus.events_subject(self._job_id),
            wrapper.SerializeToString(),
            stream=self._bus.events_stream,
            headers={"Nats-Msg-Id": msg_id},
        )
