"""Follow a job's event stream to its end, re-attaching with WatchJob when the stream breaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc

from genmesh.v1 import (
    asset_pb2,
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from genmesh_cli.client import TERMINAL_STATES, format_rpc_error

# Codes that mean the stream broke rather than the call being refused: a restarting router,
# a dropped connection, a server that stopped mid-stream.
BROKEN_STREAM = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


T = TypeVar("T")


async def retry_broken(
    attempt: Callable[[], Awaitable[T]],
    deadline: Callable[[], float],
    on_broken: Callable[[grpc.aio.AioRpcError], None],
) -> T:
    """`attempt()` again with backoff (0.2 s doubling to 2 s) while it fails with a broken
    stream; any other error, or one whose next try would pass `deadline()`, is raised."""
    delay = 0.2
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() not in BROKEN_STREAM or time.monotonic() + delay > deadline():
                raise
            on_broken(error)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


class StreamStalled(Exception):
    """The job's streams keep closing without news; the job may still be running."""


class View(Protocol):
    """Where a follower reports what it sees."""

    def job(self, job: job_pb2.Job) -> None: ...

    def event(self, event: job_pb2.JobEvent) -> None: ...

    def note(self, text: str) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How a job ended."""

    job_id: str
    state: job_pb2.JobState.ValueType
    provider: str
    assets: list[asset_pb2.Asset]
    output_text: str
    error: job_pb2.JobError

    @classmethod
    def from_event(cls, event: job_pb2.JobEvent, job: job_pb2.Job | None) -> Outcome:
        return cls(
            job_id=event.job_id,
            state=event.state,
            provider=event.provider or (job.provider if job else ""),
            assets=list(event.assets),
            output_text=event.output_text,
            error=event.error,
        )

    @classmethod
    def from_job(cls, job: job_pb2.Job) -> Outcome:
        return cls(
            job_id=job.id,
            state=job.state,
            provider=job.provider,
            assets=list(job.assets),
            output_text=job.output_text,
            error=job.error,
        )


# Either stream's messages: a `job` first, then `event`s.
Update = generate_service_pb2.GenerateResponse | job_service_pb2.WatchJobResponse


@dataclass
class Follower:
    """Streams one job's events to a View, each exactly once, across broken streams."""

    generate_stub: generate_service_pb2_grpc.GenerateServiceStub
    job_stub: job_service_pb2_grpc.JobServiceStub
    view: View
    # How long to keep trying to (re)attach before giving up; reset by every message.
    attach_timeout: float = 60.0
    # How long to retry the first Generate call (a mesh still starting, a router restarting).
    submit_timeout: float = 5.0
    job_id: str = ""
    last_sequence: int = 0
    latest_job: job_pb2.Job | None = None
    _terminal: job_pb2.JobEvent | None = field(default=None, repr=False)
    # The router is out of reach: said once when it goes and once when it is back, not at
    # every retry in between.
    _lost: bool = field(default=False, repr=False)

    async def generate(self, spec: job_pb2.JobSpec) -> Outcome:
        """Submit and follow. `spec` must carry an idempotency key, so a retry is the same job."""
        if not spec.idempotency_key:
            raise ValueError("Generate is retried, so the spec needs an idempotency key")
        request = generate_service_pb2.GenerateRequest(spec=spec)
        deadline = time.monotonic() + self.submit_timeout

        async def attempt() -> None:
            try:
                await self._consume(self.generate_stub.Generate(request))
            except grpc.aio.AioRpcError as error:
                # Once the job exists, a broken stream is _finish's to re-attach, however late.
                if error.code() not in BROKEN_STREAM or not self.job_id:
                    raise
                self._lose(error)

        await retry_broken(attempt, lambda: deadline, self._lose)
        return await self._finish()

    async def watch(self, job_id: str) -> Outcome:
        """Attach to an existing job and follow it from its first event."""
        self.job_id = job_id
        return await self._finish()

    async def _finish(self) -> Outcome:
        """Re-attach with WatchJob after the last seen sequence until the job ends."""
        delay = 0.2
        last_progress = time.monotonic()
        while True:
            outcome = self._outcome()
            if outcome is not None:
                return outcome
            request = job_service_pb2.WatchJobRequest(
                job_id=self.job_id, after_sequence=self.last_sequence
            )
            seen = self.last_sequence, self.latest_job
            try:
                await self._consume(self.job_stub.WatchJob(request))
            except grpc.aio.AioRpcError as error:
                if error.code() not in BROKEN_STREAM:
                    raise
                if time.monotonic() - last_progress > self.attach_timeout:
                    raise StreamStalled(
                        f"job {self.job_id}: lost the router for {self.attach_timeout:g}s "
                        f"({format_rpc_error(error)}); re-attach with "
                        f"`genmesh generate --watch {self.job_id}`"
                    ) from None
                self._lose(error)
            if self._outcome() is not None:
                continue
            if (self.last_sequence, self.latest_job) != seen:
                last_progress = time.monotonic()
                delay = 0.2
            elif time.monotonic() - last_progress > self.attach_timeout:
                raise StreamStalled(
                    f"job {self.job_id}: no news for {self.attach_timeout:.0f}s; "
                    f"re-attach with `genmesh generate --watch {self.job_id}`"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _lose(self, error: grpc.aio.AioRpcError) -> None:
        if not self._lost:
            self._lost = True
            again = "re-attaching" if self.job_id else "retrying"
            self.view.note(f"lost the router ({error.code().name}); {again} until it is back")

    def _outcome(self) -> Outcome | None:
        if self._terminal is not None:
            return Outcome.from_event(self._terminal, self.latest_job)
        job = self.latest_job
        # The stream closed after a job that had already ended (its events were all seen).
        if (
            job is not None
            and job.state in TERMINAL_STATES
            and job.last_sequence <= (self.last_sequence)
        ):
            return Outcome.from_job(job)
        return None

    async def _consume(self, stream: AsyncIterator[Update]) -> None:
        async for update in stream:
            if self._lost:
                self._lost = False
                self.view.note("router back; re-attached" if self.job_id else "router back")
            which = update.WhichOneof("update")
            if which == "job":
                self.latest_job = update.job
                self.job_id = update.job.id
                self.view.job(update.job)
            elif which == "event":
                event = update.event
                # A replay that overlaps what was seen must not show anything twice.
                if event.sequence <= self.last_sequence:
                    continue
                self.last_sequence = event.sequence
                self.view.event(event)
                if event.state in TERMINAL_STATES:
                    self._terminal = event
                    return
