"""Carrying a live stream across a lost router.

When the router serving a stream dies or restarts, gRPC ends the call UNAVAILABLE in its own
words (gateway.errors.out_of_reach). A stream with a resume point, one job's (after the last
sequence relayed) or the feed (after the last cursor), is then opened again on the same
channel, which reaches another replica or the same router once back, with backoff, for up to
a window of seconds. What the new call repeats is dropped, so the client sees one unbroken
stream with each event once. Past the window, or on any other error, the stream fails as it
always did. A batch's stream has no resume point and is not wrapped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Protocol

import grpc

from gateway.errors import out_of_reach
from services.common.backoff import patiently

log = logging.getLogger("gateway.resuming")

Message = dict[str, Any]
Stream = AsyncGenerator[Message, None]
# Seconds before the second try to re-open a stream (the first is at once), doubling to most.
RETRY_FIRST = 0.1
RETRY_MOST = 2.0


class ResumePoint(Protocol):
    """Where a stream stands, and how to open its call again from there."""

    @property
    def resumable(self) -> bool:
        """Whether there is a point to resume from yet."""
        ...

    def fresh(self, message: Message) -> bool:
        """Note a message the call sent; False if the client already had it."""
        ...

    def open(self) -> Awaitable[Stream]:
        """The call opened from here, its first message come (gateway.live._open)."""
        ...


class JobPoint:
    """One job's stream (WatchJob; Generate once its job exists), opened again as WatchJob
    after the last sequence relayed."""

    def __init__(
        self, watch: Callable[[str, int], Awaitable[Stream]], job_id: str = "", after: int = 0
    ) -> None:
        self._watch = watch
        self.job_id = job_id
        self.after = after

    @property
    def resumable(self) -> bool:
        return bool(self.job_id)

    def fresh(self, message: Message) -> bool:
        if "job" in message:
            self.job_id = self.job_id or str(message["job"]["id"])
        elif "event" in message:
            sequence = int(message["event"]["sequence"])
            if sequence <= self.after:
                return False
            self.after = sequence
        return True

    def open(self) -> Awaitable[Stream]:
        return self._watch(self.job_id, self.after)


class FeedPoint:
    """The feed (WatchJobs), opened again at the last cursor relayed. A feed opened at a
    cursor sends the events after it, some of which the client may have had: those relayed
    since that cursor are remembered (a burst's worth: a cursor follows each) to be dropped."""

    def __init__(self, watch: Callable[[str], Awaitable[Stream]], cursor: str = "") -> None:
        self._watch = watch
        self.cursor = cursor
        # Per job, the last sequence relayed since the cursor.
        self._since: dict[str, int] = {}
        # Per job, the last sequence a feed opened again may send a second time; forgotten
        # once the job's events go past it.
        self._repeats: dict[str, int] = {}

    @property
    def resumable(self) -> bool:
        return bool(self.cursor)

    def fresh(self, message: Message) -> bool:
        if "cursor" in message:
            self.cursor = str(message["cursor"])
            self._since.clear()
        elif "event" in message:
            job_id = str(message["event"]["job_id"])
            sequence = int(message["event"]["sequence"])
            if sequence <= self._repeats.get(job_id, 0):
                return False
            self._repeats.pop(job_id, None)
            self._since[job_id] = sequence
        return True

    def open(self) -> Awaitable[Stream]:
        # Still remembered from an earlier break: those may come again from this cursor too.
        for job_id, sequence in self._since.items():
            self._repeats[job_id] = max(sequence, self._repeats.get(job_id, 0))
        self._since.clear()
        return self._watch(self.cursor)


async def resuming(first: Stream, point: ResumePoint, window: float) -> Stream:
    """`first`'s messages, then, whenever the router serving the call is lost, those of the
    call opened again from `point`, each once; `window` seconds of trying (0: none) before
    the error is raised."""
    stream = first
    while True:
        try:
            async with aclosing(stream):
                async for message in stream:
                    if point.fresh(message):
                        yield message
            return
        except grpc.aio.AioRpcError as error:
            if window <= 0 or not out_of_reach(error) or not point.resumable:
                raise
            log.warning("lost the router mid-stream (%s); resuming", error.details())
        stream = await patiently(
            lambda: _reopen(point), _lost, patience=window, first=RETRY_FIRST, most=RETRY_MOST
        )
        log.info("resumed the stream")


async def _reopen(point: ResumePoint) -> Stream:
    stream = await point.open()
    # The call starts with what the client already has the like of: the job as it was (a
    # snapshot, with every event since following) or the cursor it resumes from.
    await anext(stream)
    return stream


def _lost(error: Exception) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and out_of_reach(error)
