"""Runs pipeline jobs: each step as a job of its own, made through the router's normal path,
its progress and outcome recorded on the pipeline job with the step named.

Who drives a pipeline: the router replica holding its lease (a NATS KV key per pipeline
job). The replica that accepted the pipeline claims it at once; every replica rescans the
unfinished pipelines in the store each lease period and claims those whose lease lapsed, so a
pipeline whose router died is adopted by another (or by the same one restarted). A step's job
has an idempotency key derived from (pipeline job, step), so whoever resumes finds the step's
job rather than making a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Coroutine
from typing import TYPE_CHECKING, Any, cast

from genmesh.v1 import job_pb2
from services.common.backoff import doubling
from services.common.cancelling import cancel_tasks
from services.common.clock import stamp
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    NotFound,
    ResourceExhausted,
    TooLarge,
    Unavailable,
)
from services.common.tasks import DRAFT_TASKS, listed, state_name, task_name
from services.router import attempts
from services.router.core import check_one_input
from services.router.deadlines import job_deadline
from services.router.pipelines.leases import Lease, LeaseLost, Leases
from services.router.pipelines.plan import (
    Plan,
    check_placeholders,
    plan,
    step_spec,
    wants_json,
)
from services.router.pipelines.status import new_run
from services.router.records import queued_event
from services.router.store import Incoming, JobStore
from services.router.transitions import TERMINAL, fold
from services.router.watch import WatchHub

if TYPE_CHECKING:
    from services.router.core import RouterCore

log = logging.getLogger(__name__)

_COMPLETED = job_pb2.JOB_STATE_COMPLETED
_FAILED = job_pb2.JOB_STATE_FAILED
_CANCELLED = job_pb2.JOB_STATE_CANCELLED
_PREVIEW = job_pb2.JOB_STATE_PREVIEW_READY
# Tries at creating a step's job while storage or every provider is unavailable.
SUBMIT_TRIES = 5
# Seconds between tries at creating a step's job while its provider's queue is full,
# doubling up to FULL_RETRY_MAX.
FULL_RETRY_FIRST = 0.5
FULL_RETRY_MAX = 5.0


class Pipelines:
    """Creates pipeline jobs and drives the ones this replica holds the lease on."""

    def __init__(
        self,
        core: RouterCore,
        store: JobStore,
        hub: WatchHub,
        leases: Leases,
        *,
        prompt_max_length: int,
        rescan: float,
    ) -> None:
        self._store = store
        self._hub = hub
        self._leases = leases
        self._prompt_max_length = prompt_max_length
        self._rescan = rescan
        # The core that makes (and cancels) the steps' jobs.
        self.core = core
        self._running: dict[str, asyncio.Task[None]] = {}
        self._scanner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Resume unfinished pipelines now, and adopt lapsed ones from here on."""
        self._scanner = asyncio.create_task(self._adopt())

    async def stop(self) -> None:
        """Stop driving; leases are released, so another replica adopts at once."""
        await cancel_tasks([self._scanner, *self._running.values()])

    # ---- create ---------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        spec: job_pb2.JobSpec,
        job_id: str,
        call_remaining: float | None = None,
    ) -> job_pb2.Job:
        """Check the pipeline, store its job QUEUED with every step waiting, start it. Its
        deadline (spec.timeout, or a Generate call's) bounds the whole pipeline."""
        return await self.core.create_once(
            tenant,
            spec,
            lambda: self._new_job(tenant, spec, job_id, call_remaining),
            self._persist_and_start,
        )

    async def _new_job(
        self, tenant: str, spec: job_pb2.JobSpec, job_id: str, call_remaining: float | None
    ) -> job_pb2.Job:
        checked = plan(spec, self._prompt_max_length)
        check_placeholders(checked)
        # Here, not in plan(): pipelines stored before it was checked must still resume. Steps
        # read only the first ("input" is one asset).
        check_one_input("a pipeline", spec.input_asset_ids)
        if spec.draft_first and not DRAFT_TASKS.intersection(s.task for s in checked.steps):
            raise InvalidArgument(
                f"draft_first applies to {listed(DRAFT_TASKS)} steps, and this pipeline has none"
            )
        for number, step in enumerate(checked.steps, 1):
            await self._check_step(tenant, spec, step, f"pipeline step {number} ({step.name!r})")
        job = job_pb2.Job(id=job_id, tenant_id=tenant, state=job_pb2.JOB_STATE_QUEUED)
        job.spec.CopyFrom(spec)
        job.pipeline.CopyFrom(new_run(checked.name, list(checked.steps)))
        job.last_sequence = 1
        deadline = job_deadline(spec, call_remaining)
        if deadline is not None:
            job.deadline.CopyFrom(deadline)
        stamp(job.create_time)
        job.update_time.CopyFrom(job.create_time)
        steps = ", ".join(s.name for s in checked.steps)
        job.progress.message = f"pipeline {checked.name or 'custom'}: {steps}"
        return job

    async def _check_step(
        self, tenant: str, spec: job_pb2.JobSpec, step: job_pb2.PipelineStep, where: str
    ) -> None:
        """What can be known now of the step's job: whether selection takes its provider and
        parameters, and whether the pipeline's input suits it when it reads that."""
        job = job_pb2.JobSpec(task=step.task, provider=step.provider, parameters=step.parameters)
        try:
            self.core.check_route(job)
            if "input" in step.inputs:
                job.input_asset_ids.append(spec.input_asset_ids[0])
                await self.core.check_inputs(tenant, job)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc.message}") from exc

    async def _persist_and_start(self, job: job_pb2.Job, digest: str) -> None:
        first = queued_event(job)
        await self._store.create(job, digest, first, dispatched=True)
        await self._hub.publish([first])
        self._launch(job.tenant_id, job.id)

    # ---- cancel ---------------------------------------------------------------------

    async def cancel_steps(self, tenant: str, job: job_pb2.Job, reason: str) -> None:
        """The pipeline job was cancelled: cancel its running step's job."""
        for status in job.pipeline.steps:
            if status.job_id and status.state not in TERMINAL:
                await self._cancel_quietly(tenant, status.job_id, f"pipeline cancelled: {reason}")

    async def _cancel_quietly(self, tenant: str, job_id: str, reason: str) -> None:
        with contextlib.suppress(FailedPrecondition, NotFound):
            await self.core.cancel(tenant, job_id, reason)

    # ---- drive ----------------------------------------------------------------------

    async def _adopt(self) -> None:
        while True:
            try:
                async for job in self._store.unfinished(pipelines=True):
                    self._launch(job.tenant_id, job.id)
            except Exception:
                log.warning("scanning for unfinished pipelines failed", exc_info=True)
            await asyncio.sleep(self._rescan)

    def _launch(self, tenant: str, job_id: str) -> None:
        if job_id in self._running:
            return
        task = asyncio.create_task(self._drive_leased(tenant, job_id))
        self._running[job_id] = task
        task.add_done_callback(lambda _: self._running.pop(job_id, None))

    async def _drive_leased(self, tenant: str, job_id: str) -> None:
        try:
            lease = await self._leases.claim(job_id)
        except Exception:
            log.warning("could not claim pipeline %s; will retry", job_id, exc_info=True)
            return
        if lease is None:
            return  # another replica drives it
        try:
            await _until_first(lease.keep(), self._drive(tenant, job_id))
        except LeaseLost:
            log.warning("lost the lease on pipeline %s; another router drives it now", job_id)
        except Exception:
            log.exception("driving pipeline %s failed; it will be resumed", job_id)
        finally:
            await _release(lease)

    async def _drive(self, tenant: str, job_id: str) -> None:
        job = await self._store.get(tenant, job_id)
        if job is None or job.state in TERMINAL:
            return
        run = _Run(self, job, plan(job.spec, self._prompt_max_length))
        for index, status in enumerate(job.pipeline.steps):
            if status.state == _COMPLETED:
                continue
            if not await run.step(index):
                return

    async def record(self, job: job_pb2.Job, event: job_pb2.JobEvent) -> bool:
        """Apply a router-made event to the pipeline job and publish it; False if the job
        has ended (or would not move forward)."""
        event.job_id = job.id
        stamp(event.time)
        applied = await self._store.apply([Incoming(job.id, event)])
        if not applied:
            return False
        fold(job, applied[0])
        await self._hub.publish(applied)
        return True


class _Run:
    """One pipeline job being driven: its snapshot (kept in step with what is recorded)."""

    def __init__(self, owner: Pipelines, job: job_pb2.Job, plan: Plan) -> None:
        self._owner = owner
        self._core = owner.core
        self.job = job
        self._plan = plan

    def _label(self, index: int) -> str:
        return f"step {index + 1}/{len(self._plan.steps)} {self._plan.steps[index].name}"

    async def step(self, index: int) -> bool:
        """Run step `index` to its end; True when it completed and the pipeline goes on."""
        step = self._plan.steps[index]
        task = task_name(step.task)
        try:
            spec = step_spec(self.job, self._plan, index)
            child = await self._submit(spec, index)
        except MeshError as exc:
            error = job_pb2.JobError(
                code="step_rejected",
                message=f"step {step.name!r} ({task}) could not start: {exc.message}",
                kind=job_pb2.ERROR_KIND_INVALID_INPUT,
            )
            await self._end(_FAILED, step.name, "", error)
            return False
        if child is None:
            return False
        after = child.last_sequence
        if not self.job.pipeline.steps[index].job_id:
            started = self._event(step.name, child.id)
            started.progress.message = f"{self._label(index)}: {task} on {child.provider}"
            if not await self._owner.record(self.job, started):
                await self._abandon(child.id)
                return False
            after = 1  # nothing of this step was shown yet: show all it has done
        ending = await self._follow(index, child.id, after)
        if ending is None:
            return False
        return await self._finish(index, child.id, ending)

    async def _submit(self, spec: job_pb2.JobSpec, index: int) -> job_pb2.Job | None:
        """The step's job, made through Submit's path; None if the pipeline ended meanwhile.
        Unavailable is tried again a few times. A provider at its queue bound is waited for
        as long as the pipeline lasts, as a job held for room waits: the pipeline was
        accepted, and a full queue is no fault of its steps."""
        step = self._plan.steps[index].name
        unavailable = full = 0
        while True:
            try:
                return await self._core.submit(
                    self.job.tenant_id, spec, parent_job_id=self.job.id, step=step
                )
            except TooLarge:
                raise
            except ResourceExhausted as exc:
                full += 1
                if full == 1 and not await self._waiting(index, exc.message):
                    return None
                delay = doubling(full, FULL_RETRY_FIRST, FULL_RETRY_MAX)
            except Unavailable:
                unavailable += 1
                if unavailable == SUBMIT_TRIES:
                    raise
                delay = doubling(unavailable, 0.5, 8.0)
            await asyncio.sleep(delay)
            if (await self._core.get(self.job.tenant_id, self.job.id)).state in TERMINAL:
                return None

    async def _waiting(self, index: int, why: str) -> bool:
        """Tell watchers the step waits for room at its provider; False if the pipeline
        has ended."""
        note = self._event(self._plan.steps[index].name, "")
        note.progress.message = f"{self._label(index)}: waiting for room: {why}"
        return await self._owner.record(self.job, note)

    def _event(self, step: str, step_job_id: str) -> job_pb2.JobEvent:
        return job_pb2.JobEvent(
            state=attempts.note_state(self.job), step=step, step_job_id=step_job_id
        )

    async def _follow(self, index: int, child_id: str, after: int) -> job_pb2.JobEvent | None:
        """Record the step job's progress and previews; its final event (None if the
        pipeline ended meanwhile)."""
        name = self._plan.steps[index].name
        updates = cast(
            AsyncGenerator[job_pb2.Job | job_pb2.JobEvent, None],
            self._core.watch(self.job.tenant_id, child_id, after),
        )
        async with contextlib.aclosing(updates):
            async for update in updates:
                if isinstance(update, job_pb2.Job):
                    if update.state in TERMINAL and update.last_sequence <= after:
                        return _ending(update)  # it ended before we looked
                    continue
                if update.state in TERMINAL:
                    return update
                if update.state == job_pb2.JOB_STATE_QUEUED:
                    continue
                event = self._event(name, child_id)
                if update.HasField("preview"):
                    event.state = _PREVIEW
                    event.preview.CopyFrom(update.preview)
                event.progress.CopyFrom(update.progress)
                said = update.progress.message or state_name(update.state).replace("-", " ")
                event.progress.message = f"{name}: {said}"
                # A step's run handed back is the pipeline's news too (watchers keep its why).
                event.handed_back = update.handed_back
                if not await self._owner.record(self.job, event):
                    await self._abandon(child_id)
                    return None
        return None

    async def _finish(self, index: int, child_id: str, ending: job_pb2.JobEvent) -> bool:
        step = self._plan.steps[index]
        what = f"step {step.name!r} ({task_name(step.task)})"
        if ending.state == _COMPLETED:
            problem = self._output_problem(step, ending)
            if problem:
                error = job_pb2.JobError(
                    code="invalid_output",
                    message=f"{what} {problem}",
                    kind=job_pb2.ERROR_KIND_FATAL,
                    provider=ending.provider,
                )
                await self._end(_FAILED, step.name, child_id, error)
                return False
            last = index == len(self._plan.steps) - 1
            done = self._event(step.name, child_id)
            if last:
                done.state = _COMPLETED
            done.assets.extend(ending.assets)
            done.output_text = ending.output_text
            done.progress.message = f"{self._label(index)}: completed"
            return await self._owner.record(self.job, done) and not last
        if ending.state == _FAILED:
            error = job_pb2.JobError()
            error.CopyFrom(ending.error)
            error.code = error.code or "step_failed"
            error.message = f"{what} failed: {ending.error.message or 'no reason given'}"
            await self._end(_FAILED, step.name, child_id, error)
            return False
        error = job_pb2.JobError(
            code="cancelled", message=f"{what} was cancelled: {ending.error.message}"
        )
        await self._end(_CANCELLED, step.name, child_id, error)
        return False

    def _output_problem(self, step: job_pb2.PipelineStep, ending: job_pb2.JobEvent) -> str:
        if not ending.assets and not ending.output_text:
            return "completed without any output"
        keys = self._plan.required_keys(step.name)
        if not keys and not wants_json(step):
            return ""
        try:
            answer = json.loads(ending.output_text)
        except ValueError:
            return "did not answer with JSON"
        if not isinstance(answer, dict):
            return "answered with JSON that is not an object"
        missing = [key for key in keys if key not in answer]
        if missing:
            return f"answered JSON without {', '.join(missing)}"
        return ""

    async def _end(
        self,
        state: job_pb2.JobState.ValueType,
        step: str,
        child_id: str,
        error: job_pb2.JobError,
    ) -> None:
        event = job_pb2.JobEvent(state=state, step=step, step_job_id=child_id)
        event.error.CopyFrom(error)
        await self._owner.record(self.job, event)

    async def _abandon(self, child_id: str) -> None:
        """The pipeline ended (cancelled) while its step ran: stop the step too."""
        await self._owner._cancel_quietly(
            self.job.tenant_id, child_id, "its pipeline job has ended"
        )


def _ending(job: job_pb2.Job) -> job_pb2.JobEvent:
    """A finished job's outcome, shaped like its final event."""
    event = job_pb2.JobEvent(
        job_id=job.id,
        state=job.state,
        assets=job.assets,
        output_text=job.output_text,
        provider=job.provider,
    )
    if job.HasField("error"):
        event.error.CopyFrom(job.error)
    return event


async def _until_first(*work: Coroutine[Any, Any, None]) -> None:
    """Run coroutines until the first ends; cancel the rest; re-raise the first's error."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _release(lease: Lease) -> None:
    # Shielded, so a router stopping (which cancels this task) still gives the lease up.
    await asyncio.shield(lease.release())
