"""Live fan-out of recorded events to the watchers connected to this router replica."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from genmesh.v1 import job_pb2
from services.common.bus import Bus

log = logging.getLogger(__name__)

# Events buffered per watcher before it is marked lagging and re-reads the store.
LISTENER_BUFFER = 1024
# Seconds a watcher may hear nothing before its job is looked up in the store, in case word
# of an event went missing (a replica that recorded it died before announcing it).
RECHECK = 5.0


class Listener:
    """One watcher's inbox. A full inbox drops events and flags `lagged`; nothing is lost,
    because the watcher then catches up from the store by sequence."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[job_pb2.JobEvent] = asyncio.Queue(LISTENER_BUFFER)
        self.lagged = False
        self.seen = 0  # the last sequence the watcher has had, kept by the watcher
        self.heard = time.monotonic()  # when word of its job last came

    def offer(self, event: job_pb2.JobEvent) -> None:
        self.heard = time.monotonic()
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True

    def nudge(self) -> None:
        """Send the watcher to the store: its job has moved on without word of it here."""
        self.heard = time.monotonic()
        try:
            self.queue.put_nowait(_WAKE)
        except asyncio.QueueFull:
            self.lagged = True  # a full inbox goes to the store anyway

    async def next(self, within: float | None = None) -> job_pb2.JobEvent | None:
        """The next event, or None when lagging, nudged or after `within` seconds."""
        if self.lagged:
            self.lagged = False
            while not self.queue.empty():
                self.queue.get_nowait()
            return None
        if not self.queue.empty():
            # The common case under load: no timer to arm and disarm.
            event = self.queue.get_nowait()
        elif within is None:
            event = await self.queue.get()
        else:
            try:
                async with asyncio.timeout(within):
                    event = await self.queue.get()
            except TimeoutError:
                return None
        return None if event is _WAKE else event


# Wakes a watcher waiting on an empty inbox; never handed out.
_WAKE = job_pb2.JobEvent()


class WatchHub:
    """Every replica's recorder publishes applied events on core NATS; every replica's hub
    hears them, so a watcher sees events whichever replica recorded them.

    A hub hands its own replica's events to its watchers directly. The subject names the
    replica, so a hub whose connection echoes skips its own events without decoding them.
    """

    def __init__(self, nc: Client, bus: Bus) -> None:
        self._nc = nc
        self._bus = bus
        self._listeners: dict[str, set[Listener]] = {}
        self._taps: set[Callable[[job_pb2.JobEvent], None]] = set()
        self._sub: Subscription | None = None
        self._origin = uuid.uuid4().hex[:12]

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._bus.watch_wildcard, cb=self._on_message)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, events: Iterable[job_pb2.JobEvent]) -> None:
        for event in events:
            await self._nc.publish(
                self._bus.watch_subject(self._origin, event.job_id), event.SerializeToString()
            )
            self._deliver(event)

    @contextmanager
    def listen(self, job_id: str) -> Iterator[Listener]:
        listener = Listener()
        self._listeners.setdefault(job_id, set()).add(listener)
        try:
            yield listener
        finally:
            group = self._listeners.get(job_id)
            if group is not None:
                group.discard(listener)
                if not group:
                    del self._listeners[job_id]

    async def recheck(
        self, stored: Callable[[Sequence[str]], Awaitable[dict[str, int]]], quiet: float
    ) -> None:
        """Nudge the watchers that heard nothing for `quiet` seconds while their job moved
        on in the store; `stored` gives jobs' last sequences. One query for them all."""
        since = time.monotonic() - quiet
        silent = [
            (job_id, listener)
            for job_id, group in self._listeners.items()
            for listener in group
            if listener.heard <= since
        ]
        if not silent:
            return
        latest = await stored(sorted({job_id for job_id, _ in silent}))
        for job_id, listener in silent:
            if latest.get(job_id, 0) > listener.seen:
                listener.nudge()

    async def recheck_every(
        self, stored: Callable[[Sequence[str]], Awaitable[dict[str, int]]], quiet: float
    ) -> None:
        """recheck() twice every `quiet` seconds, until cancelled."""
        while True:
            await asyncio.sleep(quiet / 2)
            try:
                await self.recheck(stored, quiet)
            except Exception:
                log.warning("rechecking silent watchers failed", exc_info=True)

    @contextmanager
    def tap(self, fn: Callable[[job_pb2.JobEvent], None]) -> Iterator[None]:
        """Call `fn` with every event heard, whatever its job (the all-jobs feed)."""
        self._taps.add(fn)
        try:
            yield
        finally:
            self._taps.discard(fn)

    async def _on_message(self, msg: Msg) -> None:
        origin, job_id = msg.subject.rsplit(".", 2)[-2:]
        if origin == self._origin or (job_id not in self._listeners and not self._taps):
            return
        event = job_pb2.JobEvent()
        try:
            event.ParseFromString(msg.data)
        except Exception:
            log.warning("undecodable watch message on %s", msg.subject)
            return
        self._deliver(event)

    def _deliver(self, event: job_pb2.JobEvent) -> None:
        for listener in self._listeners.get(event.job_id, ()):
            listener.offer(event)
        for fn in self._taps:
            fn(event)
