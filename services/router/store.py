"""The router's durable state: jobs and their events, in SQLite or PostgreSQL."""

from __future__ import annotations

import base64
import functools
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from genmesh.v1 import job_pb2
from services.common.clock import stamp
from services.common.db import Database, DbConnection
from services.common.errors import InvalidArgument
from services.common.group_commit import GroupCommit
from services.common.prepared import Prepared
from services.router import attempts, limits, ordering
from services.router.transitions import TERMINAL, applied_state, fold

_T = TypeVar("_T")

metadata = MetaData()


def _fill_parents(conn: Connection) -> None:
    """Name the pipeline of each step job stored before jobs.parent_job_id existed (see
    db._upgrade for when); a body that cannot be read is left as it is."""
    after = ""
    while True:
        # A step's idempotency key has this shape (pipelines/plan.py); the body says whether
        # the job is a step, and whose. By id, a page at a time: no table is read whole.
        rows = conn.execute(
            select(jobs.c.id, jobs.c.body)
            .where(
                jobs.c.idempotency_key.like("pipeline:%"),
                jobs.c.parent_job_id.is_(None),
                jobs.c.id > after,
            )
            .order_by(jobs.c.id)
            .limit(CHUNK)
        ).all()
        steps = [(r.id, _parent(r.body)) for r in rows]
        parents = [{"_id": i, "set_parent_job_id": parent} for i, parent in steps if parent]
        if parents:
            conn.execute(_update_by_id(("_id", "parent_job_id")).statement, parents)
        if len(rows) < CHUNK:
            return
        after = rows[-1].id


def _parent(body: bytes) -> str:
    try:
        return _job(body).parent_job_id
    except Exception:
        return ""


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("task", Integer, nullable=False),
    Column("state", Integer, nullable=False),
    Column("provider", String(64), nullable=False),
    # NULL when the caller gave no key, so the unique constraint ignores those rows.
    Column("idempotency_key", String(200), nullable=True),
    Column("spec_hash", String(64), nullable=False),
    Column("last_sequence", Integer, nullable=False),
    # Highest events-stream sequence applied; a message without a run (from a worker before
    # runs) at or below it is a repeat.
    Column("applied_stream_seq", Integer, nullable=False, default=0),
    # Where each run of the job's workers has got to (ordering.Runs); NULL: none heard yet.
    Column("runs", Text, nullable=True),
    Column("attempt", Integer, nullable=False, default=1),
    Column("dispatched", Boolean, nullable=False, default=False),
    Column("create_time", Double, nullable=False),
    Column("update_time", Double, nullable=False),
    # The whole Job message; the columns above exist to query and lock by.
    Column("body", LargeBinary, nullable=False),
    # Unix time the job fails with "deadline_exceeded"; NULL: no deadline.
    Column("deadline", Double, nullable=True),
    # The SubmitBatch call that created the job; NULL for jobs submitted one by one.
    Column("batch_id", String(40), nullable=True),
    # The pipeline job whose step the job runs; NULL for a top-level job.
    Column(
        "parent_job_id",
        String(40),
        nullable=True,
        # The top-level listing's index is made once the backfill is through.
        info={"backfill": _fill_parents, "done_when": "jobs_top_level_listing"},
    ),
    UniqueConstraint("tenant_id", "idempotency_key", name="jobs_idempotency"),
    Index("jobs_tenant_listing", "tenant_id", "create_time", "id"),
    Index("jobs_undispatched", "dispatched"),
    # By state first, so the sweep reads only unfinished jobs, not every job ever deadlined.
    Index("jobs_deadline", "state", "deadline"),
    Index("jobs_batch", "batch_id"),
)

# Jobs that do not run a pipeline's step: pipelines and jobs submitted on their own.
_TOP_LEVEL = jobs.c.parent_job_id.is_(None)
# Partial: a listing of top-level jobs reads no step's entry, however many steps there are.
Index(
    "jobs_top_level_listing",
    jobs.c.tenant_id,
    jobs.c.create_time,
    jobs.c.id,
    postgresql_where=_TOP_LEVEL,
    sqlite_where=_TOP_LEVEL,
)

job_events = Table(
    "job_events",
    metadata,
    Column("job_id", String(40), primary_key=True),
    Column("sequence", Integer, primary_key=True),
    Column("state", Integer, nullable=False),
    Column("create_time", Double, nullable=False),
    Column("body", LargeBinary, nullable=False),
)


# Jobs a SubmitBatch answered with although another call created them (a spec whose
# idempotency key was used before): they belong to that batch too, beside the jobs whose
# batch_id names it, so the batch id the call returned can be watched and listed whole.
batch_members = Table(
    "batch_members",
    metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("job_id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    # A retried batch looks its jobs' batches up by job.
    Index("batch_members_job", "job_id"),
)


def _in_batch(tenant: str, batch_id: str) -> ColumnElement[bool]:
    """Jobs of `batch_id`: those it created and those it was answered with."""
    # A union rather than `batch_id = b OR id IN (...)`: PostgreSQL plans that OR as a
    # filter over every job of the tenant; each side of the union uses its own index.
    created = select(jobs.c.id).where(jobs.c.tenant_id == tenant, jobs.c.batch_id == batch_id)
    members = select(batch_members.c.job_id).where(
        batch_members.c.tenant_id == tenant, batch_members.c.batch_id == batch_id
    )
    return jobs.c.id.in_(union(created, members))


class DuplicateIdempotencyKey(Exception):
    """Another request created a job with this key first."""


@dataclass(frozen=True)
class Incoming:
    """An event to apply; stream_seq is its events-stream sequence and attempt the attempt a
    worker reported it for (both None for the router's own events). The events of one
    message share its stream_seq, run, index and deliveries, and are applied in one batch."""

    job_id: str
    event: job_pb2.JobEvent
    stream_seq: int | None = None
    attempt: int | None = None
    # Its place among the events of its message.
    part: int = 0
    # The worker's run that published the message and the message's index in it (see
    # ordering); "" and 0 from a worker before runs.
    run: str = ""
    index: int = 0
    # How often JetStream has delivered the message, this time included, and seconds since
    # it was stored.
    deliveries: int = 1
    age: float = 0.0
    # Whether the message carries its attempt's outcome, or ends its run without one (the
    # worker handed the job message back).
    outcome: bool = False
    handed_back: bool = False
    # For a router's note that the worker of this run (of the job) is lost: the note applies,
    # and the run is taken as lost, only if the run may still be sent on (ordering.Runs.lose).
    lost_run: str = ""


_WHOLE = 1 << 30


# Given a job and a FAILED event about to apply to it: the event to apply instead when the
# job moves to another provider (the callee updates the job's attempts and parameters), or None.
Reroute = Callable[[job_pb2.Job, job_pb2.JobEvent], job_pb2.JobEvent | None]


@dataclass
class Routed:
    """What one applied batch means for routing: attempts that ended, jobs to send on."""

    events: list[job_pb2.JobEvent] = field(default_factory=list)
    # (task, attempt) for every attempt that got its outcome.
    ended: list[tuple[int, job_pb2.Attempt]] = field(default_factory=list)
    # Jobs moved to another provider, each to dispatch as its current attempt.
    redispatch: list[job_pb2.Job] = field(default_factory=list)
    # (job id, why) for jobs completed while other attempts ran: their workers must stop.
    stop: list[tuple[str, str]] = field(default_factory=list)
    # Stream sequences of messages that came before their predecessor in their run: not
    # applied, to be handed back to come again.
    deferred: set[int] = field(default_factory=set)
    # Runs taken as lost (Incoming.lost_run): their job messages are the caller's to send on.
    lost: set[str] = field(default_factory=set)


# A new job's row and its first event's row, written together.
_CreateRows = tuple[dict[str, object], dict[str, object]]


@dataclass
class _Row:
    """A locked job row while a batch is applied."""

    job: job_pb2.Job
    stream_seq: int
    attempt: int
    runs: ordering.Runs
    rerouted: bool = False


class _Marks:
    """Which of a batch's worker events are news, kept across the batch."""

    def __init__(self) -> None:
        # Per job: the last part applied of the message at row.stream_seq, for messages
        # without a run this batch applied; a stored stream_seq's message was applied whole.
        self._parts: dict[str, int] = {}
        # Per job: the stream sequence of the message with a run last judged in this batch,
        # and whether it applies; its other parts follow its first.
        self._judged: dict[str, tuple[int, bool]] = {}

    def fresh(self, row: _Row, item: Incoming, deferred: set[int]) -> bool:
        """Whether a worker's event goes on to the state machine; notes it on the row, and
        its message's stream sequence in `deferred` when it came early."""
        seq = item.stream_seq
        assert seq is not None
        if not item.run:
            # From a worker before runs: news when past the newest message applied.
            if (seq, item.part) <= (row.stream_seq, self._parts.get(item.job_id, _WHOLE)):
                return False  # a redelivery
            row.stream_seq = seq
            self._parts[item.job_id] = item.part
            return True
        if item.part:
            return self._judged.get(item.job_id) == (seq, True)
        fresh = self._judge(row, item, seq, deferred)
        self._judged[item.job_id] = (seq, fresh)
        if fresh and seq > row.stream_seq:
            row.stream_seq = seq
            self._parts.pop(item.job_id, None)
        return fresh

    @staticmethod
    def _judge(row: _Row, item: Incoming, seq: int, deferred: set[int]) -> bool:
        job = row.job
        if job.state in TERMINAL or (
            item.attempt is not None and not attempts.accepts_from(job, item.attempt, row.attempt)
        ):
            # Nothing from it can apply, now or later: no need to wait for its turn.
            return False
        verdict = row.runs.place(
            item.run,
            item.attempt or 0,
            item.index,
            seq,
            overdue=ordering.overdue(item.deliveries, item.age),
            outcome=item.outcome,
            ends=item.handed_back,
        )
        if verdict is ordering.Verdict.EARLY:
            deferred.add(seq)
        if verdict is ordering.Verdict.OVERDUE:
            return item.outcome or seq > row.stream_seq
        return verdict is ordering.Verdict.NEXT


@dataclass(frozen=True)
class Page:
    jobs: list[job_pb2.Job]
    next_token: str


MAX_PAGE = 500
# Room in a ListJobs reply for its token and framing, besides the jobs.
PAGE_MARGIN = 1024
UNFINISHED = sorted(set(job_pb2.JobState.values()) - TERMINAL - {job_pb2.JOB_STATE_UNSPECIFIED})
# Values per IN (...) query.
CHUNK = 500
# A replay reads stored events this many at a time: a long history neither sits whole in
# memory nor holds the database through one long read.
REPLAY_PAGE = 500


def chunks(items: Sequence[_T]) -> Iterator[list[_T]]:
    """`items` in slices of CHUNK, one IN (...) query each."""
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


class JobStore:
    """Jobs and events; every read takes the tenant, so nothing leaks across tenants."""

    def __init__(self, engine: Database) -> None:
        self._engine = engine
        self._locking = engine.dialect_name == "postgresql"
        self._creates: GroupCommit[_CreateRows] = GroupCommit(self._insert_creates)

    async def create(
        self,
        job: job_pb2.Job,
        spec_hash: str,
        first: job_pb2.JobEvent,
        *,
        dispatched: bool = False,
    ) -> None:
        """Insert a QUEUED job and its first event, durably, before returning; `dispatched`
        for a job no provider queue will see (a pipeline job).

        Concurrent creates share one transaction (group commit)."""
        key = job.spec.idempotency_key or None
        rows = (_job_row(job, spec_hash, dispatched=dispatched), _event_row(job.id, first))
        try:
            await self._creates.submit(rows)
        except IntegrityError as exc:
            if key is not None:
                raise DuplicateIdempotencyKey(key) from exc
            raise

    async def _insert_creates(self, batch: Sequence[_CreateRows]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(_INSERT_JOBS, [job_row for job_row, _ in batch])
            await conn.execute(_INSERT_EVENTS, [event_row for _, event_row in batch])

    async def create_many(
        self,
        created: Sequence[tuple[job_pb2.Job, str, job_pb2.JobEvent]],
        members: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """Insert (job, spec hash, first event) triples and (tenant, batch id, job id) batch
        members in one transaction: all or none.

        DuplicateIdempotencyKey when another call took one of their keys first."""
        async with self._engine.begin() as conn:
            if created:
                try:
                    await conn.execute(_INSERT_JOBS, [_job_row(j, h) for j, h, _ in created])
                except IntegrityError as exc:
                    if any(j.spec.idempotency_key for j, _, _ in created):
                        raise DuplicateIdempotencyKey("one of the batch's keys") from exc
                    raise
                await conn.execute(_INSERT_EVENTS, [_event_row(j.id, e) for j, _, e in created])
            if members:
                await conn.execute(
                    insert(batch_members),
                    [{"tenant_id": t, "batch_id": b, "job_id": j} for t, b, j in members],
                )

    async def batch_job_ids(self, tenant: str, batch_id: str) -> list[str]:
        """The ids of a batch's jobs, oldest first; empty for no such batch of this tenant."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(jobs.c.id)
                .where(jobs.c.tenant_id == tenant, _in_batch(tenant, batch_id))
                .order_by(jobs.c.create_time, jobs.c.id)
            )
            return [r.id for r in rows]

    async def answered_batches(self, tenant: str, job_ids: Sequence[str]) -> dict[str, set[str]]:
        """The batches each job was answered with, beside the one that created it (its own
        batch_id): job id -> batch ids, jobs in none left out."""
        found: dict[str, set[str]] = {}
        async with self._engine.connect() as conn:
            for chunk in chunks(sorted(set(job_ids))):
                rows = await conn.execute(
                    select(batch_members.c.job_id, batch_members.c.batch_id).where(
                        batch_members.c.tenant_id == tenant, batch_members.c.job_id.in_(chunk)
                    )
                )
                for job_id, batch_id in rows:
                    found.setdefault(job_id, set()).add(batch_id)
        return found

    async def get_many(self, tenant: str, job_ids: Sequence[str]) -> list[job_pb2.Job]:
        """The tenant's jobs among `job_ids`, in that order (missing ones left out)."""
        found: dict[str, job_pb2.Job] = {}
        async with self._engine.connect() as conn:
            for chunk in chunks(job_ids):
                rows = await conn.execute(
                    select(jobs.c.id, jobs.c.body).where(
                        jobs.c.tenant_id == tenant, jobs.c.id.in_(chunk)
                    )
                )
                found.update((r.id, _job(r.body)) for r in rows)
        return [found[i] for i in job_ids if i in found]

    async def by_idempotency_key(self, tenant: str, key: str) -> tuple[job_pb2.Job, str] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.body, jobs.c.spec_hash).where(
                        jobs.c.tenant_id == tenant, jobs.c.idempotency_key == key
                    )
                )
            ).first()
        return (_job(row.body), row.spec_hash) if row else None

    async def by_idempotency_keys(
        self, tenant: str, keys: Sequence[str]
    ) -> dict[str, tuple[job_pb2.Job, str]]:
        """by_idempotency_key for many keys at once: key -> (job, spec hash), found ones only."""
        found: dict[str, tuple[job_pb2.Job, str]] = {}
        unique = sorted(set(keys))
        async with self._engine.connect() as conn:
            for chunk in chunks(unique):
                rows = await conn.execute(
                    select(jobs.c.idempotency_key, jobs.c.body, jobs.c.spec_hash).where(
                        jobs.c.tenant_id == tenant, jobs.c.idempotency_key.in_(chunk)
                    )
                )
                found.update((r.idempotency_key, (_job(r.body), r.spec_hash)) for r in rows)
        return found

    async def get(self, tenant: str, job_id: str) -> job_pb2.Job | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.body).where(jobs.c.id == job_id, jobs.c.tenant_id == tenant)
                )
            ).first()
        return _job(row.body) if row else None

    async def replay(self, job_id: str, after: int) -> AsyncGenerator[job_pb2.JobEvent, None]:
        """Every event after `after`, oldest first, read a page at a time."""
        while True:
            # A connection per page: a slow reader must not hold the database between pages.
            async with self._engine.connect() as conn:
                page = await events_after_in(conn, job_id, after, limit=REPLAY_PAGE)
            for event in page:
                yield event
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].sequence

    async def last_sequences(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Each job's last event sequence, by id (whatever its tenant; missing ones left out)."""
        found: dict[str, int] = {}
        async with self._engine.connect() as conn:
            for chunk in chunks(job_ids):
                rows = await conn.execute(
                    select(jobs.c.id, jobs.c.last_sequence).where(jobs.c.id.in_(chunk))
                )
                found.update((r.id, r.last_sequence) for r in rows)
        return found

    async def list_jobs(
        self,
        tenant: str,
        *,
        states: Sequence[int] = (),
        task: int = 0,
        batch_id: str = "",
        top_level_only: bool = False,
        page_size: int = 50,
        page_token: str = "",
    ) -> Page:
        """Newest first, by (create_time, id); the token is the last row's position. With
        `top_level_only`, pipelines' step jobs are left out."""
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size must be 0..{MAX_PAGE}, got {page_size}")
        size = page_size or 50
        after = decode_page_token(page_token) if page_token else None
        if batch_id and not limits.known_id(batch_id):
            # No batch has such an id, and PostgreSQL would refuse one holding a NUL.
            return Page([], "")
        query = listing_query(
            tenant,
            states=states,
            task=task,
            batch_id=batch_id,
            top_level_only=top_level_only,
            after=after,
        ).limit(size + 1)
        async with self._engine.connect() as conn:
            rows = list(await conn.execute(query))
        more = len(rows) > size
        rows = rows[:size]
        # A page ends early rather than make a reply a client cannot receive.
        budget = limits.MAX_REPLY_BYTES - PAGE_MARGIN
        for n, row in enumerate(rows):
            budget -= len(row.body) + 8
            if budget < 0 and n > 0:
                rows, more = rows[:n], True
                break
        token = encode_page_token(rows[-1].create_time, rows[-1].id) if more and rows else ""
        return Page([_job(r.body) for r in rows], token)

    async def apply(self, batch: Sequence[Incoming]) -> list[job_pb2.JobEvent]:
        """Apply events in order, each at most once; returns those applied, with sequences.

        Events that would move a job backwards, touch a finished job, repeat an
        already-applied stream message or come from a superseded attempt are dropped, so
        applying anything twice changes nothing.
        """
        return (await self.apply_routed(batch)).events

    async def apply_routed(
        self, batch: Sequence[Incoming], reroute: Reroute | None = None
    ) -> Routed:
        """Like apply; a FAILED event that `reroute` turns into a fallback starts the job's
        next attempt (marked undispatched in the same transaction) instead of ending it."""
        routed = Routed()
        if not batch:
            return routed
        ids = sorted({item.job_id for item in batch})
        async with self._engine.begin() as conn:
            rows = await self._lock_jobs(conn, ids)
            touched: dict[str, _Row] = {}
            marks = _Marks()
            for item in batch:
                row = touched.get(item.job_id) or rows.get(item.job_id)
                if row is None:
                    continue
                job = row.job
                if item.stream_seq is not None:
                    fresh = marks.fresh(row, item, routed.deferred)
                    if row.runs.changed:
                        touched[item.job_id] = row
                    if not fresh:
                        continue
                if item.lost_run:
                    # Taken once, whichever replica asks first (the row is locked).
                    taken = None if job.state in TERMINAL else row.runs.lose(item.lost_run)
                    if taken is None or not attempts.accepts_from(job, taken, row.attempt):
                        continue
                    routed.lost.add(item.lost_run)
                touched[item.job_id] = row
                if item.attempt is not None and not attempts.accepts_from(
                    job, item.attempt, row.attempt
                ):
                    continue  # a late word from a provider the job has moved on from
                state = applied_state(job.state, item.event.state)
                if state is None:
                    continue
                event = job_pb2.JobEvent()
                event.CopyFrom(item.event)
                event.state = state
                if not event.HasField("time"):
                    stamp(event.time)
                running = attempts.running(job)
                carried = None
                if event.state == job_pb2.JOB_STATE_FAILED:
                    # With a hedge still running, one attempt's failure is not the job's.
                    carried = attempts.carry_on(job, event, item.attempt)
                if carried is not None:
                    event = carried
                elif event.state == job_pb2.JOB_STATE_FAILED and reroute is not None:
                    instead = reroute(job, event)
                    if instead is not None:
                        event = instead
                        row.attempt = attempts.current(job)
                        row.rerouted = True
                event.job_id = job.id
                event.sequence = job.last_sequence + 1
                fold(job, event)
                attempts.close_attempt(job, event, item.attempt)
                lost = attempts.cancel_losers(job, event)
                if lost:
                    routed.stop.append((job.id, lost[0].error.message))
                routed.ended.extend(attempts.ended_since(job, running))
                routed.events.append(event)
            if routed.events:
                rows_out = [_event_row(e.job_id, e) for e in routed.events]
                await conn.execute(_INSERT_EVENTS, rows_out)
            plain: list[dict[str, object]] = []
            rerouted: list[dict[str, object]] = []
            now = time.time()
            for job_id, row in touched.items():
                values: dict[str, object] = {
                    "_id": job_id,
                    "state": row.job.state,
                    "provider": row.job.provider,
                    "last_sequence": row.job.last_sequence,
                    "applied_stream_seq": row.stream_seq,
                    "runs": row.runs.dump(),
                    "update_time": now,
                    "body": row.job.SerializeToString(),
                }
                if row.rerouted:
                    # Not dispatched until the dispatcher marks it: a router dying before
                    # then publishes it again at start-up.
                    values.update(attempt=row.attempt, dispatched=False)
                    rerouted.append(values)
                    routed.redispatch.append(row.job)
                else:
                    plain.append(values)
            # One executemany per shape rather than one statement per job.
            for params in (plain, rerouted):
                if params:
                    await conn.execute(_update_by_id(tuple(params[0])), [_set(p) for p in params])
        return routed

    async def start_attempt(
        self, job_id: str, start: Callable[[job_pb2.Job], job_pb2.JobEvent | None]
    ) -> Routed:
        """Lock a job and let `start` open another attempt on it (returning the event that
        says so, or None to leave the job be); the job is stored undispatched with it."""
        routed = Routed()
        async with self._engine.begin() as conn:
            row = (await self._lock_jobs(conn, [job_id])).get(job_id)
            if row is None or row.job.state in TERMINAL:
                return routed
            job = row.job
            event = start(job)
            if event is None:
                return routed
            event.job_id = job.id
            event.sequence = job.last_sequence + 1
            fold(job, event)
            await conn.execute(_INSERT_EVENTS, [_event_row(job.id, event)])
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=job.state,
                    provider=job.provider,
                    last_sequence=job.last_sequence,
                    attempt=attempts.current(job),
                    dispatched=False,
                    update_time=time.time(),
                    body=job.SerializeToString(),
                )
            )
        routed.events.append(event)
        routed.redispatch.append(job)
        return routed

    async def _lock_jobs(self, conn: DbConnection, ids: list[str]) -> dict[str, _Row]:
        # Router replicas share the recorder consumer; the row lock serialises one job's events.
        query = _LOCK_JOBS_FOR_UPDATE if self._locking else _LOCK_JOBS
        rows = await conn.execute(query, {"ids": ids})
        return {
            r.id: _Row(_job(r.body), r.applied_stream_seq, r.attempt, ordering.Runs.load(r.runs))
            for r in rows
        }

    async def mark_dispatched(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self._engine.begin() as conn:
            await conn.execute(_MARK_DISPATCHED, {"ids": list(ids)})

    async def past_deadline(self, now: float, limit: int) -> list[tuple[str, int]]:
        """(id, state) of unfinished jobs whose deadline is at or before `now`, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(jobs.c.id, jobs.c.state)
                .where(
                    jobs.c.state.in_(UNFINISHED),
                    jobs.c.deadline.is_not(None),
                    jobs.c.deadline <= now,
                )
                .order_by(jobs.c.deadline)
                .limit(limit)
            )
            return [(r.id, r.state) for r in rows]

    async def unsent(self, ids: Sequence[str]) -> set[str]:
        """Those of `ids` that no router has published yet and that have not ended."""
        if not ids:
            return set()
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(jobs.c.id).where(
                    jobs.c.id.in_(list(ids)),
                    jobs.c.dispatched.is_(False),
                    jobs.c.state.in_(UNFINISHED),
                )
            )
            return {r.id for r in rows}

    async def unsent_count(self, provider: str) -> int:
        """Jobs for `provider` that no router has published yet and that have not ended:
        those held back by any replica (and, for a moment, ones on their way)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(func.count()).where(
                    jobs.c.dispatched.is_(False),
                    jobs.c.provider == provider,
                    jobs.c.state.in_(UNFINISHED),
                )
            )
            return int(rows.scalar_one())

    async def undispatched(
        self, limit: int = 1000, after: tuple[float, str] | None = None
    ) -> list[job_pb2.Job]:
        """Jobs persisted but maybe never published (the router died in between), oldest
        first; `after` (create_time, id) of the last one read pages past jobs still held."""
        query = select(jobs.c.body).where(jobs.c.dispatched.is_(False))
        if after is not None:
            query = query.where(
                or_(
                    jobs.c.create_time > after[0],
                    and_(jobs.c.create_time == after[0], jobs.c.id > after[1]),
                )
            )
        async with self._engine.connect() as conn:
            rows = await conn.execute(query.order_by(jobs.c.create_time, jobs.c.id).limit(limit))
            return [_job(r.body) for r in rows]

    async def unfinished(
        self, *, pipelines: bool = False, page: int = 1000
    ) -> AsyncIterator[job_pb2.Job]:
        """Every job that has not ended, oldest first, read `page` rows at a time; with
        `pipelines`, only pipeline jobs (the only jobs without a task). Scans the jobs table,
        so it is meant for start-up and slow sweeps, not for a request."""
        query = select(jobs.c.body, jobs.c.create_time, jobs.c.id).where(
            jobs.c.state.in_(UNFINISHED)
        )
        if pipelines:
            query = query.where(jobs.c.task == job_pb2.TASK_UNSPECIFIED)
        query = query.order_by(jobs.c.create_time, jobs.c.id).limit(page)
        paged = query
        while True:
            # Keyset paging: each read is one short page, however many jobs are unfinished.
            async with self._engine.connect() as conn:
                rows = list(await conn.execute(paged))
            for r in rows:
                yield _job(r.body)
            if len(rows) < page:
                return
            created, last_id = rows[-1].create_time, rows[-1].id
            paged = query.where(
                or_(
                    jobs.c.create_time > created,
                    and_(jobs.c.create_time == created, jobs.c.id > last_id),
                )
            )


def listing_query(
    tenant: str,
    *,
    states: Sequence[int] = (),
    task: int = 0,
    batch_id: str = "",
    top_level_only: bool = False,
    after: tuple[float, str] | None = None,
) -> Select[tuple[bytes, float, str]]:
    """The tenant's jobs newest first, past the (create_time, id) `after`, for ListJobs."""
    query = select(jobs.c.body, jobs.c.create_time, jobs.c.id).where(jobs.c.tenant_id == tenant)
    if top_level_only:
        # The partial index's own condition, so both databases read that index alone.
        query = query.where(_TOP_LEVEL)
    if states:
        query = query.where(jobs.c.state.in_(list(states)))
    if task:
        query = query.where(jobs.c.task == task)
    if batch_id:
        query = query.where(_in_batch(tenant, batch_id))
    if after is not None:
        created, last_id = after
        query = query.where(
            or_(
                jobs.c.create_time < created,
                and_(jobs.c.create_time == created, jobs.c.id < last_id),
            )
        )
    return query.order_by(jobs.c.create_time.desc(), jobs.c.id.desc())


async def events_after_in(
    conn: DbConnection, job_id: str, after: int, limit: int | None = None
) -> list[job_pb2.JobEvent]:
    """A job's events after sequence `after` (the first `limit` of them), oldest first, on a
    connection the caller holds."""
    query = (
        select(job_events.c.body)
        .where(job_events.c.job_id == job_id, job_events.c.sequence > after)
        .order_by(job_events.c.sequence)
        .limit(limit)
    )
    rows = await conn.execute(query)
    return [_event(r.body) for r in rows]


# Statements built once: building one and its cache key costs more than running it.
_INSERT_JOBS = Prepared(insert(jobs))
_INSERT_EVENTS = Prepared(insert(job_events))
_MARK_DISPATCHED = Prepared(
    update(jobs).where(jobs.c.id.in_(bindparam("ids", expanding=True))).values(dispatched=True)
)
_LOCK_JOBS_QUERY = select(
    jobs.c.id, jobs.c.body, jobs.c.applied_stream_seq, jobs.c.attempt, jobs.c.runs
).where(jobs.c.id.in_(bindparam("ids", expanding=True)))
_LOCK_JOBS = Prepared(_LOCK_JOBS_QUERY)
_LOCK_JOBS_FOR_UPDATE = Prepared(_LOCK_JOBS_QUERY.with_for_update())


@functools.cache
def _update_by_id(columns: tuple[str, ...]) -> Prepared:
    """UPDATE jobs SET <columns> WHERE id = :_id, for executemany with _set's parameters
    (a bound name may not be a column's own)."""
    return Prepared(
        update(jobs)
        .where(jobs.c.id == bindparam("_id"))
        .values({c: bindparam(f"set_{c}") for c in columns if c != "_id"})
    )


def _set(values: dict[str, object]) -> dict[str, object]:
    return {k if k == "_id" else f"set_{k}": v for k, v in values.items()}


def _job(body: bytes) -> job_pb2.Job:
    job = job_pb2.Job()
    job.ParseFromString(body)
    return job


def _event(body: bytes) -> job_pb2.JobEvent:
    event = job_pb2.JobEvent()
    event.ParseFromString(body)
    return event


def _job_row(job: job_pb2.Job, spec_hash: str, *, dispatched: bool = False) -> dict[str, object]:
    return {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "task": job.spec.task,
        "state": job.state,
        "provider": job.provider,
        "idempotency_key": job.spec.idempotency_key or None,
        "spec_hash": spec_hash,
        "last_sequence": job.last_sequence,
        "applied_stream_seq": 0,
        "runs": None,
        "attempt": 1,
        "dispatched": dispatched,
        "create_time": job.create_time.ToNanoseconds() / 1e9,
        "update_time": time.time(),
        "body": job.SerializeToString(),
        "deadline": job.deadline.ToNanoseconds() / 1e9 if job.HasField("deadline") else None,
        "batch_id": job.batch_id or None,
        "parent_job_id": job.parent_job_id or None,
    }


def _event_row(job_id: str, event: job_pb2.JobEvent) -> dict[str, object]:
    return {
        "job_id": job_id,
        "sequence": event.sequence,
        "state": event.state,
        "create_time": event.time.ToNanoseconds() / 1e9,
        "body": event.SerializeToString(),
    }


def encode_page_token(create_time: float, job_id: str) -> str:
    raw = json.dumps([create_time, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[float, str]:
    """The position a token names; InvalidArgument if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        if not isinstance(created, int | float) or not isinstance(job_id, str):
            raise ValueError
        # float() of a huge integer overflows; a NUL in the id is refused by PostgreSQL.
        if not math.isfinite(float(created)) or not limits.known_id(job_id):
            raise ValueError
        return float(created), job_id
    # RecursionError: JSON nested deeper than the parser goes.
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidArgument("malformed page_token; pass one from a ListJobs response") from exc
