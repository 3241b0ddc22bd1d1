"""JobService.WatchJobs: every event of one tenant's jobs, live, resumable from a cursor.

A feed remembers what it has sent as a Position: the last sequence per job it follows (every
job still running, plus the recently created), and a create-time mark below which every job
is known. Live events come from the WatchHub's tap; the store is re-read every few seconds
(and whenever a feed falls behind), so a lost notice or a full buffer delays an event, never
drops it. The Position is the cursor, so a resumed feed sends exactly what the old one had
not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from sqlalchemy import select

from genmesh.v1 import job_pb2
from services.common.cancelling import cancel_task
from services.common.db import Database
from services.common.errors import InvalidArgument
from services.router.limits import known_id
from services.router.store import UNFINISHED, chunks, events_after_in, jobs
from services.router.transitions import TERMINAL
from services.router.watch import Listener, WatchHub

log = logging.getLogger(__name__)

# How late a job's row may become visible after its create_time says (commit delay plus
# clock skew between router replicas); jobs created within it are looked for again.
SLACK = 30.0
# Seconds between store re-reads, whether or not live events arrive.
RECHECK = 5.0
# A cursor at least this often while nothing happens (keeps proxies from closing the stream).
KEEPALIVE = 15.0
# Live events waiting to be routed to feeds; past it every feed re-reads the store.
ROUTE_BUFFER = 65_536
# Jobs whose tenant is remembered, so routing an event rarely needs the store.
TENANT_CACHE = 100_000
_CURSOR_VERSION = 1
# A cursor's JSON, inflated, is at most this long (about 400,000 followed jobs).
MAX_CURSOR_JSON = 16 * 1024 * 1024

Update = job_pb2.JobEvent | str


@dataclass
class Position:
    """What a feed has sent: the last sequence of each job it follows, and the mark."""

    mark: float
    sent: dict[str, int] = field(default_factory=dict)

    def encode(self) -> str:
        raw = json.dumps([_CURSOR_VERSION, self.mark, self.sent], separators=(",", ":"))
        return base64.urlsafe_b64encode(zlib.compress(raw.encode(), 6)).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        """The position a cursor names; InvalidArgument if it is not one of ours."""
        try:
            packed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            # Bounded: a crafted cursor of a few MiB could otherwise inflate to gigabytes.
            inflate = zlib.decompressobj()
            raw = inflate.decompress(packed, MAX_CURSOR_JSON)
            if not inflate.eof:
                raise ValueError
            version, mark, sent = json.loads(raw)
            if version != _CURSOR_VERSION or not isinstance(mark, int | float):
                raise ValueError
            # float() of a huge integer overflows; an id no job has (a NUL, say, which
            # PostgreSQL refuses outright) must not reach a query.
            if not math.isfinite(float(mark)):
                raise ValueError
            if not isinstance(sent, dict) or not all(
                isinstance(k, str) and known_id(k) and isinstance(v, int) and v >= 0
                for k, v in sent.items()
            ):
                raise ValueError
        # RecursionError: JSON nested deeper than the parser goes.
        except (ValueError, TypeError, OverflowError, RecursionError, zlib.error) as exc:
            raise InvalidArgument("malformed cursor; pass one from a WatchJobs response") from exc
        return cls(float(mark), dict(sent))


class FeedHub:
    """Routes every recorded event to the feeds of its job's tenant, and serves the feeds."""

    def __init__(self, hub: WatchHub, engine: Database) -> None:
        self._hub = hub
        self._engine = engine
        self._heard: asyncio.Queue[job_pb2.JobEvent] = asyncio.Queue(ROUTE_BUFFER)
        self._feeds: dict[str, set[Listener]] = {}
        self._tenants: OrderedDict[str, str] = OrderedDict()
        self._stack = ExitStack()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stack.enter_context(self._hub.tap(self._on_event))
        self._task = asyncio.create_task(self._route())

    async def stop(self) -> None:
        self._stack.close()
        await cancel_task(self._task)
        self._task = None

    async def watch(self, tenant: str, cursor: str) -> AsyncIterator[Update]:
        """A cursor, then the tenant's events each followed in time by a newer cursor."""
        with self._listen(tenant) as listener:
            # Listening before reading the store: an event recorded in between is heard.
            if cursor:
                position = Position.decode(cursor)
                checked = 0.0  # re-read at once: everything since the cursor
            else:
                position = await self._start(tenant)
                checked = time.monotonic()
            yield position.encode()
            cursor_at = time.monotonic()
            while True:
                wait = max(0.0, checked + RECHECK - time.monotonic())
                heard = await listener.next(wait) if wait else None
                if heard is None:
                    # Time to re-read, a lag, or silence: the store is the truth.
                    batch = await self._catch_up(tenant, position)
                    checked = time.monotonic()
                else:
                    batch = await self._follow(position, [heard, *_drain(listener)])
                for event in batch:
                    yield event
                if batch or time.monotonic() - cursor_at >= KEEPALIVE:
                    yield position.encode()
                    cursor_at = time.monotonic()

    # ---- routing ----------------------------------------------------------------------

    def _on_event(self, event: job_pb2.JobEvent) -> None:
        if not self._feeds:
            return
        try:
            self._heard.put_nowait(event)
        except asyncio.QueueFull:
            # Nothing is lost: every feed re-reads the store on its next wait.
            for group in self._feeds.values():
                for listener in group:
                    listener.lagged = True

    async def _route(self) -> None:
        while True:
            batch = [await self._heard.get()]
            while not self._heard.empty():
                batch.append(self._heard.get_nowait())
            try:
                await self._learn_tenants({e.job_id for e in batch} - self._tenants.keys())
            except Exception:
                log.warning("looking up job tenants failed; feeds re-read the store", exc_info=True)
                for group in self._feeds.values():
                    for listener in group:
                        listener.lagged = True
                continue
            for event in batch:
                tenant = self._tenants.get(event.job_id)
                for listener in self._feeds.get(tenant or "", ()):
                    listener.offer(event)

    async def _learn_tenants(self, ids: set[str]) -> None:
        if not ids:
            return
        async with self._engine.connect() as conn:
            for chunk in chunks(sorted(ids)):
                rows = await conn.execute(
                    select(jobs.c.id, jobs.c.tenant_id).where(jobs.c.id.in_(chunk))
                )
                for row in rows:
                    self._tenants[row.id] = row.tenant_id
        while len(self._tenants) > TENANT_CACHE:
            self._tenants.popitem(last=False)

    @contextmanager
    def _listen(self, tenant: str) -> Iterator[Listener]:
        listener = Listener()
        self._feeds.setdefault(tenant, set()).add(listener)
        try:
            yield listener
        finally:
            group = self._feeds.get(tenant)
            if group is not None:
                group.discard(listener)
                if not group:
                    del self._feeds[tenant]

    # ---- reading the store ---------------------------------------------------------------

    async def _start(self, tenant: str) -> Position:
        """Now: every running or recent job at its current sequence, so only news follows."""
        mark = time.time()
        query = select(jobs.c.id, jobs.c.last_sequence).where(
            jobs.c.tenant_id == tenant,
            jobs.c.state.in_(UNFINISHED) | (jobs.c.create_time >= mark - SLACK),
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(query)
            return Position(mark, {r.id: r.last_sequence for r in rows})

    async def _follow(
        self, position: Position, heard: Sequence[job_pb2.JobEvent]
    ) -> list[job_pb2.JobEvent]:
        """Live events in order; a gap, or a job not yet followed, is filled from the store."""
        out: list[job_pb2.JobEvent] = []
        for event in heard:
            last = position.sent.get(event.job_id)
            if last is not None and event.sequence <= last:
                continue
            if last is not None and event.sequence == last + 1:
                events = [event]
            else:
                # A job not followed yet is new since the position was taken.
                async with self._engine.connect() as conn:
                    events = await events_after_in(conn, event.job_id, last or 0)
            for item in events:
                out.append(item)
                position.sent[item.job_id] = item.sequence
        return out

    async def _catch_up(self, tenant: str, position: Position) -> list[job_pb2.JobEvent]:
        """Every event the position has not sent: of the jobs it follows, and of new jobs."""
        mark = time.time()
        out: list[job_pb2.JobEvent] = []
        async with self._engine.connect() as conn:
            columns = (jobs.c.id, jobs.c.last_sequence, jobs.c.state, jobs.c.create_time)
            new = await conn.execute(
                select(*columns).where(
                    jobs.c.tenant_id == tenant, jobs.c.create_time >= position.mark - SLACK
                )
            )
            rows = {r.id: r for r in new}
            for chunk in chunks([j for j in position.sent if j not in rows]):
                followed = await conn.execute(
                    select(*columns).where(jobs.c.tenant_id == tenant, jobs.c.id.in_(chunk))
                )
                rows.update((r.id, r) for r in followed)
            for job_id in [j for j in position.sent if j not in rows]:
                del position.sent[job_id]  # not this tenant's: a forged or foreign cursor
            for row in rows.values():
                last = position.sent.get(row.id, 0)
                if row.last_sequence > last:
                    events = await events_after_in(conn, row.id, last)
                    out.extend(events)
                    if events:
                        position.sent[row.id] = events[-1].sequence
                # A finished, fully sent job older than the window will never be looked at again.
                done = row.state in TERMINAL and position.sent.get(row.id, 0) >= row.last_sequence
                if done and row.create_time < mark - SLACK:
                    position.sent.pop(row.id, None)
        position.mark = mark
        return out


def _drain(listener: Listener) -> list[job_pb2.JobEvent]:
    out = []
    while not listener.lagged and not listener.queue.empty():
        out.append(listener.queue.get_nowait())
    return out
