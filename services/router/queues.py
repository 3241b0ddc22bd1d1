"""Estimated queue positions: how many jobs wait for a provider, from its JetStream consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from genmesh.v1 import job_pb2
from services.common.bus import Bus
from services.common.cancelling import cancel_tasks
from services.router.transitions import TERMINAL

log = logging.getLogger(__name__)

# Seconds between reads of one provider's consumer; submits in between count locally.
REFRESH = 0.25
# Jobs remembered with their message's stream sequence until seen leaving their queue; only
# with router replicas (which record each other's jobs' starts) are older ones forgotten.
MAX_SENT = 100_000


class QueueDepths:
    """Per provider: undelivered jobs as JetStream last reported, plus jobs dispatched since.

    Consumer info is read at most every REFRESH seconds per provider, and concurrent submits
    share one read, so a busy router pays one NATS round trip per provider per REFRESH rather
    than one per job. Jobs this replica sees leave the queue are counted out at once; those
    recorded by other replicas only at the next read, so the position is an estimate."""

    def __init__(self, js: JetStreamContext, bus: Bus, refresh: float = REFRESH) -> None:
        self._js = js
        self._bus = bus
        self._refresh = refresh
        self._depth: dict[str, int | None] = {}
        self._read_at: dict[str, float] = {}
        self._reading: dict[str, asyncio.Future[None]] = {}
        self._drained: list[Callable[[], None]] = []
        # Jobs this replica published since the last read began, until they are seen start.
        self._fresh: dict[str, set[str]] = {}
        # Job -> (provider, stream sequence of its message), until it is seen leave its queue.
        self._sent: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._withdrawing: set[asyncio.Task[None]] = set()

    async def depth(self, provider: str) -> int | None:
        """Jobs waiting in the provider's queue, if known (read again when stale)."""
        if self._stale(provider):
            with contextlib.suppress(Exception):
                await asyncio.shield(self._refresh_soon(provider))
        return self._depth.get(provider)

    def cached(self, provider: str) -> int | None:
        """The current estimate, without reading JetStream."""
        return self._depth.get(provider)

    def latest(self, provider: str) -> int | None:
        """The current estimate; starts a read in the background when it is stale."""
        if self._stale(provider):
            self._refresh_soon(provider)
        return self._depth.get(provider)

    def count_in(self, provider: str, job_id: str, seq: int | None = None) -> None:
        """A job was just published to the provider's queue, at stream sequence `seq`."""
        if seq is not None:
            self._sent[job_id] = (provider, seq)
            if len(self._sent) > MAX_SENT:
                self._sent.popitem(last=False)
        self._fresh.setdefault(provider, set()).add(job_id)
        depth = self._depth.get(provider)
        if depth is not None:
            self._depth[provider] = depth + 1

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever jobs are seen leaving a queue."""
        self._drained.append(callback)

    def observe(self, events: Iterable[job_pb2.JobEvent]) -> None:
        """Count out jobs that just left their queue (sequence 2 follows the QUEUED event).

        Only jobs counted in since the last read: one that left before it was not in the
        number read, and counting it out again would undercount (and let the admission gate
        pass jobs it should hold). Missing one overcounts until the next read, the safe side."""
        left = False
        for event in events:
            sent = self._sent.pop(event.job_id, None) if event.sequence >= 2 else None
            if sent is not None and event.sequence == 2 and event.state in TERMINAL:
                # Ended before it started (cancelled, past its deadline): its message would
                # count as waiting until a worker took it, holding off jobs that can run.
                self._withdraw(*sent)
            fresh = self._fresh.get(event.provider)
            if event.sequence == 2 and fresh and event.job_id in fresh:
                fresh.discard(event.job_id)
                self._depth[event.provider] = max(0, (self._depth.get(event.provider) or 0) - 1)
                left = True
        if left:
            for callback in self._drained:
                callback()

    def _withdraw(self, provider: str, seq: int) -> None:
        task = asyncio.ensure_future(self._delete(provider, seq))
        self._withdrawing.add(task)
        task.add_done_callback(self._withdrawing.discard)

    async def _delete(self, provider: str, seq: int) -> None:
        try:
            await self._js.delete_msg(self._bus.jobs_stream, seq)
        except Exception:
            # Already taken by a worker (which skips a cancelled job) or NATS out of reach:
            # the job counts until a worker takes it, as before.
            log.debug("cannot withdraw message %d of %s", seq, provider, exc_info=True)
            return
        self._read_at.pop(provider, None)  # the next depth() reads the count without it

    def _stale(self, provider: str) -> bool:
        return time.monotonic() - self._read_at.get(provider, -1e9) > self._refresh

    def _refresh_soon(self, provider: str) -> asyncio.Future[None]:
        """The read under way for `provider`, or a new one; concurrent callers share it."""
        reading = self._reading.get(provider)
        if reading is None or reading.done():
            reading = asyncio.ensure_future(self._read(provider))
            self._reading[provider] = reading
        return reading

    async def stop(self) -> None:
        await cancel_tasks([*self._reading.values(), *self._withdrawing])

    async def _read(self, provider: str) -> None:
        counted = set(self._fresh.get(provider, ()))
        depth: int | None = None
        try:
            info = await self._js.consumer_info(
                self._bus.jobs_stream, self._bus.worker_consumer(provider), timeout=1.0
            )
        except NotFoundError:
            # No worker has ever served it: its jobs wait, but nobody counts them yet.
            pass
        except Exception:
            log.debug("cannot read the queue of %s", provider, exc_info=True)
        else:
            depth = int(info.num_pending or 0)
        # Jobs published while the read was under way may be missing from it: count them
        # (perhaps twice, until the next read) rather than lose them.
        during = self._fresh.get(provider, set()) - counted
        self._fresh[provider] = during
        self._depth[provider] = None if depth is None else depth + len(during)
        if during:
            # Made stale: the next depth() reads again rather than hold a count that may
            # have those jobs twice (a queue bound refusing a job it has room for).
            self._read_at.pop(provider, None)
        else:
            self._read_at[provider] = time.monotonic()
