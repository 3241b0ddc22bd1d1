"""Batches: SubmitBatch (many specs, all or none, in one transaction) and WatchBatch (the
batch's jobs, their live events merged, and a summary whenever one of them ends)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from genmesh.v1 import job_pb2, job_service_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, MeshError, NotFound
from services.common.text import findable
from services.router import limits, records
from services.router.core import RouterCore, refuse_pipeline
from services.router.store import DuplicateIdempotencyKey, JobStore
from services.router.transitions import TERMINAL
from services.router.watch import Listener, WatchHub

MAX_SPECS = 1000
# Events a batch watcher may hold before its followers wait; their listeners then lag and
# re-read the store, so a slow reader loses nothing.
WATCH_BUFFER = 1024
# Times a batch is stored again after a concurrent call took one of its idempotency keys.
KEY_RACE_RETRIES = 3

Update = job_service_pb2.BatchSummary | job_pb2.Job | job_pb2.JobEvent

_RUNNING = frozenset({job_pb2.JOB_STATE_PROCESSING, job_pb2.JOB_STATE_PREVIEW_READY})


@dataclass
class _New:
    index: int
    job: job_pb2.Job
    spec_hash: str
    # Set once every spec has passed its checks.
    first: job_pb2.JobEvent = field(default_factory=job_pb2.JobEvent)


class Batches:
    def __init__(self, core: RouterCore, store: JobStore, hub: WatchHub) -> None:
        self._core = core
        self._store = store
        self._hub = hub

    # ---- SubmitBatch ----------------------------------------------------------------

    async def submit(
        self, tenant: str, specs: Sequence[job_pb2.JobSpec]
    ) -> tuple[str, list[job_pb2.Job]]:
        """Check every spec as Submit does, then store all new jobs at once and dispatch them.

        Returns the batch id and one job per spec, in order; a spec whose idempotency key was
        used before gets that earlier job, which then belongs to this batch too (its batch_id
        still names the call that created it)."""
        if not specs:
            raise InvalidArgument("specs is empty; a batch takes 1..1,000 job specs")
        if len(specs) > MAX_SPECS:
            raise InvalidArgument(
                f"{len(specs)} specs; a batch takes at most {MAX_SPECS:,}: split it"
            )
        batch_id = "b_" + uuid.uuid4().hex
        jobs: list[job_pb2.Job | None] = [None] * len(specs)
        new = await self._prepare(tenant, batch_id, specs, jobs)
        for item in new:
            item.first = records.queued_event(item.job)
        for _ in range(KEY_RACE_RETRIES):
            if not new and (same := await self._same_batch(tenant, jobs)):
                # A retried call: every spec's job was made before and one batch is exactly
                # them, so that batch is the answer, and storing it again would add another.
                batch_id = same
                break
            try:
                # Shielded: a caller hanging up must not leave jobs stored but not dispatched.
                await asyncio.shield(self._store_and_dispatch(tenant, batch_id, new, jobs))
                break
            except DuplicateIdempotencyKey:
                # A concurrent call took one of the keys: its job is the answer for that spec.
                new = await self._resolve_taken(tenant, specs, new, jobs)
        else:
            raise FailedPrecondition(
                "concurrent calls keep taking this batch's idempotency keys; try again"
            )
        for item in new:
            jobs[item.index] = item.job
        return batch_id, [job for job in jobs if job is not None]

    async def _prepare(
        self,
        tenant: str,
        batch_id: str,
        specs: Sequence[job_pb2.JobSpec],
        jobs: list[job_pb2.Job | None],
    ) -> list[_New]:
        """Submit's checks for every spec; fills `jobs` with earlier jobs of reused keys and
        returns the jobs to create. The first bad spec fails the call, named by its index."""
        new: list[_New] = []
        keys: dict[str, _New] = {}
        repeats: list[tuple[int, _New]] = []
        # Jobs prepared so far per provider: each counts toward the next one's queue bound.
        reserved: Counter[str] = Counter()
        # Only keys that could be stored are looked up; check_spec refuses the others below.
        known = await self._store.by_idempotency_keys(
            tenant,
            [
                spec.idempotency_key
                for spec in specs
                if findable(spec.idempotency_key, limits.MAX_IDEMPOTENCY_KEY)
            ],
        )
        for index, spec in enumerate(specs):
            with _naming(index):
                limits.check_spec(spec)
                # Before its key is looked up: a pipeline job made earlier by Submit with
                # the same key is no answer to a call that may not hold pipelines.
                refuse_pipeline(spec)
                spec_hash = records.spec_hash(spec)
                key = spec.idempotency_key
                if key in keys:
                    same = keys[key]
                    if same.spec_hash != spec_hash:
                        raise FailedPrecondition(
                            f"idempotency key {key!r} is also used by specs[{same.index}] "
                            "with a different spec"
                        )
                    repeats.append((index, same))
                    continue
                if key in known:
                    jobs[index] = records.same_or_conflict(known[key], spec_hash)
                    continue
                job = await self._core.prepare(
                    tenant, spec, records.new_job_id(), reserved=reserved
                )
                job.batch_id = batch_id
                item = _New(index, job, spec_hash)
                new.append(item)
                if key:
                    keys[key] = item
        for index, same in repeats:
            # A key repeated within the batch: one job, listed for each of its specs.
            jobs[index] = same.job
        # Checked before anything is stored: a reply too large to send would leave the jobs
        # created but the caller told the call failed.
        reply = [job for job in jobs if job is not None] + [item.job for item in new]
        limits.check_reply(reply, "the batch")
        return new

    async def _same_batch(self, tenant: str, jobs: Sequence[job_pb2.Job | None]) -> str:
        """The batch whose jobs are exactly `jobs`, if there is one.

        Exactly, not at least: a call listing some of a batch's jobs is a new call, and its
        batch id must watch and list just the jobs it returned."""
        known = [job for job in jobs if job is not None]
        ids = {job.id for job in known}
        answered = await self._store.answered_batches(tenant, list(ids))
        shared = set.intersection(
            *(({job.batch_id} - {""}) | answered.get(job.id, set()) for job in known)
        )
        # Sorted: calls before retries found their batch could leave several, and every
        # retry should get the same one.
        for batch_id in sorted(shared):
            if set(await self._store.batch_job_ids(tenant, batch_id)) == ids:
                return batch_id
        return ""

    async def _store_and_dispatch(
        self,
        tenant: str,
        batch_id: str,
        new: Sequence[_New],
        jobs: Sequence[job_pb2.Job | None],
    ) -> None:
        """Store the new jobs, and the earlier jobs of reused keys as members of the batch
        (so WatchBatch and ListJobs find every job the reply lists), then dispatch."""
        earlier = dict.fromkeys(
            job.id for job in jobs if job is not None and job.batch_id != batch_id
        )
        if not new and not earlier:
            return
        await self._store.create_many(
            [(item.job, item.spec_hash, item.first) for item in new],
            [(tenant, batch_id, job_id) for job_id in earlier],
        )
        if new:
            await self._core.dispatch_stored([(item.job, item.first) for item in new])

    async def _resolve_taken(
        self,
        tenant: str,
        specs: Sequence[job_pb2.JobSpec],
        new: Sequence[_New],
        jobs: list[job_pb2.Job | None],
    ) -> list[_New]:
        """The jobs still to create once those whose keys were taken meanwhile are answered
        by the jobs that took them."""
        keys = [specs[item.index].idempotency_key for item in new]
        known = await self._store.by_idempotency_keys(tenant, [key for key in keys if key])
        left = []
        for item in new:
            found = known.get(specs[item.index].idempotency_key)
            if found is None:
                left.append(item)
                continue
            with _naming(item.index):
                earlier = records.same_or_conflict(found, item.spec_hash)
            jobs[item.index] = earlier
            for index, job in enumerate(jobs):
                if job is item.job:  # the same key repeated within the batch
                    jobs[index] = earlier
        return left

    # ---- WatchBatch -----------------------------------------------------------------

    async def watch(self, tenant: str, batch_id: str) -> AsyncIterator[Update]:
        """The summary and each job as they are now, then every later event of the batch's
        jobs (each once, in sequence order per job) with a summary after each job ends."""
        if not batch_id:
            raise InvalidArgument("batch_id is required; pass the one SubmitBatch returned")
        ids = await self._store.batch_job_ids(tenant, batch_id) if limits.known_id(batch_id) else []
        if not ids:
            raise NotFound(f"batch {batch_id[: limits.MAX_ID]!r} not found")
        with ExitStack() as stack:
            # Listening before the snapshot is read, so no event falls between the two.
            listeners = {job_id: stack.enter_context(self._hub.listen(job_id)) for job_id in ids}
            jobs = await self._store.get_many(tenant, ids)
            states = {job.id: job.state for job in jobs}
            yield summary(batch_id, states.values())
            for job in jobs:
                yield job
            running = [job for job in jobs if job.state not in TERMINAL]
            merged: asyncio.Queue[job_pb2.JobEvent | Exception] = asyncio.Queue(WATCH_BUFFER)
            followers = [
                asyncio.create_task(self._relay(job, listeners[job.id], merged)) for job in running
            ]
            try:
                left = len(followers)
                while left:
                    item = await merged.get()
                    if isinstance(item, Exception):
                        raise item
                    yield item
                    states[item.job_id] = item.state
                    if item.state in TERMINAL:
                        left -= 1
                        yield summary(batch_id, states.values())
            finally:
                for task in followers:
                    task.cancel()
                await asyncio.gather(*followers, return_exceptions=True)

    async def _relay(
        self,
        job: job_pb2.Job,
        listener: Listener,
        out: asyncio.Queue[job_pb2.JobEvent | Exception],
    ) -> None:
        """One job's events after the snapshot, until it ends, onto the merged queue."""
        try:
            async for event in self._core.follow(job.id, listener, job.last_sequence):
                await out.put(event)
        except Exception as exc:  # the watcher re-raises it
            await out.put(exc)


def summary(
    batch_id: str, states: Iterable[job_pb2.JobState.ValueType]
) -> job_service_pb2.BatchSummary:
    """How many jobs are in each state."""
    result = job_service_pb2.BatchSummary(batch_id=batch_id)
    for state in states:
        result.total += 1
        if state == job_pb2.JOB_STATE_QUEUED:
            result.queued += 1
        elif state in _RUNNING:
            result.running += 1
        elif state == job_pb2.JOB_STATE_COMPLETED:
            result.completed += 1
        elif state == job_pb2.JOB_STATE_FAILED:
            result.failed += 1
        elif state == job_pb2.JOB_STATE_CANCELLED:
            result.cancelled += 1
    return result


@contextmanager
def _naming(index: int) -> Iterator[None]:
    """Errors about one spec name its index, as the caller sent it."""
    try:
        yield
    except MeshError as exc:
        raise type(exc)(f"specs[{index}]: {exc.message}") from exc
