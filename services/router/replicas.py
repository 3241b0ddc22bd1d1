"""How many router replicas are alive, so each enforces its share of a mesh-wide limit.

Every replica puts a heartbeat under its own key in a NATS KV bucket (Bus.routers_bucket)
every third of `liveness` seconds, and follows the bucket. A replica counts while its
heartbeats keep arriving: one not heard from for `liveness` seconds (it died, or lost NATS)
stops counting, and one that stops cleanly deletes its key, so it stops counting at once.
Each heartbeat is judged by when it arrived here, on this replica's own clock: no clocks need
to agree, and no server has to announce an expiry (the bucket's TTL only clears dead
replicas' keys away). Keys found in the bucket at start-up count as just heard, so a replica
that died shortly before may count for up to twice `liveness`.

Reading the count costs no NATS round trip: it comes from memory.

A replica that stops counting (it stopped cleanly, or its heartbeat lapsed) is reported to
`on_departure` callbacks at the next heartbeat tick, so the others can take over what it
left in memory (the jobs it held back, services.router.dispatch).

This replica hears its own heartbeats through the same watch as everyone else's, so it knows
when its view has gone stale (NATS unreachable, the watch stalled): it then keeps the last
count it had while current instead of believing everyone else died, and follows the bucket
afresh at its next heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable

from nats.js.kv import KeyValue

from services.common.cancelling import cancel_tasks
from services.common.kv_follow import follow, removed

log = logging.getLogger(__name__)


class Replicas:
    """This router replica's heartbeat, and its view of which replicas are alive."""

    def __init__(
        self,
        kv: KeyValue,
        liveness: float,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self._liveness = liveness
        # This replica's key in the bucket.
        self.name = name or f"router-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        # replica key -> when its latest heartbeat arrived here
        self._heard: dict[str, float] = {}
        self._count = 1
        self._follower: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None
        # The other replicas alive at the last tick, to notice which have gone since.
        self._others: set[str] = set()
        self._departure_callbacks: list[Callable[[str], None]] = []

    def on_departure(self, callback: Callable[[str], None]) -> None:
        """Call `callback(name)` when another replica stops counting."""
        self._departure_callbacks.append(callback)

    async def start(self) -> None:
        """Announce this replica, load the others, then keep both current in the background."""
        await self._beat()
        self._follower = await follow(self._kv, self._apply)
        self._others = self._alive_others(self._clock())
        self._beating = asyncio.create_task(self._beat_loop())

    async def stop(self) -> None:
        """Stop the heartbeat and delete this replica's key, so the others stop counting it."""
        await cancel_tasks([self._beating, self._follower])
        try:
            await self._kv.delete(self.name)
        except Exception:
            # Its key lapses after `liveness` instead.
            log.warning("could not withdraw router replica %s", self.name, exc_info=True)

    def count(self) -> int:
        """Router replicas alive now, this one included."""
        now = self._clock()
        if not self._current(now):
            return self._count
        live = sum(1 for heard in self._heard.values() if now - heard <= self._liveness)
        self._count = max(1, live)
        return self._count

    def _current(self, now: float) -> bool:
        return now - self._heard.get(self.name, -math.inf) <= self._liveness

    def _apply(self, entry: KeyValue.Entry) -> None:
        if removed(entry):
            self._heard.pop(entry.key, None)
        else:
            self._heard[entry.key] = self._clock()
            if entry.key != self.name:
                # Known from its first heartbeat, so that one which goes again before the
                # next tick is still noticed as gone, and what it left is taken over.
                self._others.add(entry.key)

    async def _beat(self) -> None:
        await self._kv.put(self.name, f"{socket.gethostname()} pid {os.getpid()}".encode())

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._liveness / 3)
            try:
                await self._beat()
                now = self._clock()
                if not self._current(now):
                    await self._follow_again()
                else:
                    self._forget_dead(now)
                    self._notice_departures(now)
            except Exception:
                # A NATS hiccup: the next tick tries again.
                log.warning("router replica heartbeat failed", exc_info=True)

    def _forget_dead(self, now: float) -> None:
        # Keys of replicas long dead (expired by TTL: no watcher hears of that on every
        # server version) go, so the map does not grow with every crash. Done here, not in
        # count(), which every rate-limited dispatch calls.
        for key in [k for k, heard in self._heard.items() if now - heard > 2 * self._liveness]:
            del self._heard[key]

    def _alive_others(self, now: float) -> set[str]:
        return {
            key
            for key, heard in self._heard.items()
            if key != self.name and now - heard <= self._liveness
        }

    def _notice_departures(self, now: float) -> None:
        # Judged only while this replica's own view is current (the caller checks), so a
        # watch that stalled here is not taken for every other replica dying.
        alive = self._alive_others(now)
        gone, self._others = self._others - alive, alive
        for name in sorted(gone):
            log.info("router replica %s is gone", name)
            for callback in self._departure_callbacks:
                callback(name)

    async def _follow_again(self) -> None:
        log.warning("router replica %s stopped hearing its own heartbeats; re-reading", self.name)
        await cancel_tasks([self._follower])
        self._follower = None
        self._follower = await follow(self._kv, self._apply)
