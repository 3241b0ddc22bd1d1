"""Live fan-out of recorded events to the watchers connected to this router replica."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from genmesh.v1 import job_pb2
from services.common.bus import Bus

log = logging.getLogger(__name__)

# Events buffered per watcher before it is marked lagging and re-reads the store.
LISTENER_BUFFER = 1024


class Listener:
    """One watcher's inbox. A full inbox drops events and flags `lagged`; nothing is lost,
    because the watcher then catches up from the store by sequence."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[job_pb2.JobEvent] = asyncio.Queue(LISTENER_BUFFER)
        self.lagged = False

    def offer(self, event: job_pb2.JobEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True

    async def next(self, within: float) -> job_pb2.JobEvent | None:
        """The next event, or None after `within` seconds or when lagging."""
        if self.lagged:
            self.lagged = False
            while not self.queue.empty():
                self.queue.get_nowait()
            return None
        if not self.queue.empty():
            # The common case under load: no timer to arm and disarm.
            return self.queue.get_nowait()
        try:
            async with asyncio.timeout(within):
                return await self.queue.get()
        except TimeoutError:
            return None


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
