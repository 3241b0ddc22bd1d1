"""The router's core: validate, route, persist, dispatch, cancel and watch jobs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

import grpc

from genmesh.v1 import (
    asset_pb2,
    asset_service_pb2,
    asset_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    prompt_service_pb2_grpc,
    provider_service_pb2,
)
from services.common.clock import stamp
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.parameters import dict_to_struct, struct_to_dict
from services.common.tasks import (
    DRAFT_TASKS,
    INPUT_MEDIA,
    STATES,
    TASKS,
    listed,
    state_name,
    task_name,
)
from services.common.tenancy import tenant_metadata
from services.prompt import core as prompt_rules
from services.prompt.client import PromptPreparer
from services.router import limits, records
from services.router.admission import AdmissionGate
from services.router.attempts import open_attempt
from services.router.breakers import Breakers
from services.router.catalog import Catalog
from services.router.deadlines import job_deadline
from services.router.hedging import Hedger
from services.router.selection import Selector
from services.router.selection import requested as selection_request
from services.router.stopping import WorkerStopper
from services.router.store import DuplicateIdempotencyKey, Incoming, JobStore
from services.router.transitions import TERMINAL
from services.router.watch import Listener, WatchHub

if TYPE_CHECKING:
    from services.router.pipelines.runner import Pipelines

# Outbound calls to storage and prompt fail fast rather than hold a submit.
CALL_TIMEOUT = 10.0

Update = job_pb2.Job | job_pb2.JobEvent


def check_one_input(what: str, asset_ids: Sequence[str]) -> None:
    """InvalidArgument for more than one input asset; `what` names who takes it."""
    if len(asset_ids) > 1:
        # Adapters read only the first: the others would be checked, stored and ignored.
        raise InvalidArgument(f"{what} takes exactly one input asset, not {len(asset_ids)}")


class RouterCore:
    def __init__(
        self,
        *,
        store: JobStore,
        catalog: Catalog,
        hub: WatchHub,
        stopper: WorkerStopper,
        prompts: prompt_service_pb2_grpc.PromptServiceStub,
        assets: asset_service_pb2_grpc.AssetServiceStub,
        selector: Selector,
        breakers: Breakers,
        admission: AdmissionGate,
        prompt_max_length: int,
        hedger: Hedger,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._hub = hub
        self._stopper = stopper
        self._prompt_preparer = PromptPreparer(prompts, prompt_max_length)
        self._assets = assets
        self._prompt_max_length = prompt_max_length
        self._selector = selector
        self._breakers = breakers
        self._hedger = hedger
        # Set by the app once built: it runs pipeline jobs, each step a job made here.
        self.pipelines: Pipelines | None = None
        self._admission = admission

    # ---- submit -------------------------------------------------------------------

    async def submit(
        self, tenant: str, spec: job_pb2.JobSpec, *, parent_job_id: str = "", step: str = ""
    ) -> job_pb2.Job:
        """Create and dispatch a job; returns it QUEUED (or the earlier job for a reused key).

        A pipeline step's job names its pipeline job and step."""
        return await self._create(
            tenant, spec, records.new_job_id(), parent_job_id=parent_job_id, step=step
        )

    async def generate(
        self, tenant: str, spec: job_pb2.JobSpec, call_remaining: float | None = None
    ) -> AsyncIterator[Update]:
        """Submit, then the job as created and every event until it ends; the job's deadline
        is no later than the call's (`call_remaining` seconds, when the call has one).

        The listener is in place before the job is dispatched, so nothing is read back from
        the store unless a live event goes missing."""
        job_id = records.new_job_id()
        with self._hub.listen(job_id) as listener:
            job = await self._create(tenant, spec, job_id, call_remaining)
            if job.id != job_id:
                # A reused idempotency key: follow the earlier job like any watcher.
                async for update in self.watch(tenant, job.id, 0):
                    yield update
                return
            yield job
            yield records.queued_event(job)
            async for event in self.follow(job_id, listener, 1):
                yield event

    async def _create(
        self,
        tenant: str,
        spec: job_pb2.JobSpec,
        job_id: str,
        call_remaining: float | None = None,
        *,
        parent_job_id: str = "",
        step: str = "",
    ) -> job_pb2.Job:
        limits.check_spec(spec)
        if spec.HasField("pipeline") and self.pipelines is not None:
            return await self.pipelines.create(tenant, spec, job_id, call_remaining)

        async def make() -> job_pb2.Job:
            return await self.prepare(
                tenant, spec, job_id, call_remaining, parent_job_id=parent_job_id, step=step
            )

        async def store(job: job_pb2.Job, spec_hash: str) -> None:
            await self._persist_and_dispatch(job, spec_hash, records.queued_event(job))

        return await self.create_once(tenant, spec, make, store)

    async def create_once(
        self,
        tenant: str,
        spec: job_pb2.JobSpec,
        make: Callable[[], Awaitable[job_pb2.Job]],
        store: Callable[[job_pb2.Job, str], Awaitable[None]],
    ) -> job_pb2.Job:
        """The job an earlier call made with the spec's idempotency key, else a new one from
        `make`, stored (and sent on) by `store` with the spec's hash."""
        spec_hash = records.spec_hash(spec)
        earlier = await self.earlier(tenant, spec, spec_hash)
        if earlier is not None:
            return earlier
        job = await make()
        try:
            # Shielded: a caller hanging up mid-submit must not leave a job stored but
            # never sent on.
            await asyncio.shield(store(job, spec_hash))
        except DuplicateIdempotencyKey:
            earlier = await self.earlier(tenant, spec, spec_hash)
            if earlier is None:
                raise
            return earlier
        return job

    async def earlier(
        self, tenant: str, spec: job_pb2.JobSpec, spec_hash: str
    ) -> job_pb2.Job | None:
        """The job an earlier call made with the spec's idempotency key, if any;
        FailedPrecondition when that call's spec was different."""
        if not spec.idempotency_key:
            return None
        found = await self._store.by_idempotency_key(tenant, spec.idempotency_key)
        return None if found is None else records.same_or_conflict(found, spec_hash)

    async def prepare(
        self,
        tenant: str,
        spec: job_pb2.JobSpec,
        job_id: str,
        call_remaining: float | None = None,
        *,
        parent_job_id: str = "",
        step: str = "",
        reserved: Counter[str] | None = None,
    ) -> job_pb2.Job:
        """Submit's checks and routing: the QUEUED job to store (not yet stored), with its
        estimated queue position; ResourceExhausted at its provider's queue bound.
        `reserved` counts, per provider, the jobs this call prepared before (a batch's), and
        is counted up: they wait ahead of this one once stored."""
        refuse_pipeline(spec)
        if spec.task not in TASKS:
            raise InvalidArgument("task is required; e.g. TASK_TEXT_TO_IMAGE")
        if spec.draft_first and spec.task not in DRAFT_TASKS:
            raise InvalidArgument(
                f"draft_first applies to {listed(DRAFT_TASKS)}, not {task_name(spec.task)}"
            )
        deadline = job_deadline(spec, call_remaining)
        self._check_prompt(spec)
        # Long prompts are compressed and enhancement hints added before a provider is
        # chosen, so its prompt limit applies to what it will actually receive.
        prepared = await self._prompt_preparer.prepare(spec)
        requested = struct_to_dict(spec.parameters)
        choice = self._selector.choose(selection_request(spec, requested, prepared.prompt))
        provider, parameters = choice.provider, choice.parameters
        await self.check_inputs(tenant, spec)

        job = job_pb2.Job(
            id=job_id,
            tenant_id=tenant,
            provider=provider.name,
            parent_job_id=parent_job_id,
            pipeline_step=step,
        )
        job.spec.CopyFrom(spec)
        job.spec.parameters.CopyFrom(dict_to_struct(parameters))
        job.spec.provider = spec.provider
        prepared.apply(job)
        job.state = job_pb2.JOB_STATE_QUEUED
        job.last_sequence = 1
        stamp(job.create_time)
        job.update_time.CopyFrom(job.create_time)
        if deadline is not None:
            job.deadline.CopyFrom(deadline)
        job.routing.CopyFrom(choice.decision)
        job.routing.requested_parameters.CopyFrom(dict_to_struct(requested))
        open_attempt(job, provider, choice.decision.reason, job.create_time)
        # Raises RESOURCE_EXHAUSTED at the provider's queue bound, before anything is stored.
        ahead = 0 if reserved is None else reserved[provider.name]
        position = await self._admission.reserve(provider, ahead)
        if reserved is not None:
            reserved[provider.name] += 1
        if position is not None:
            # The field counts the jobs ahead (the CLI and web page show "N ahead"); the
            # message gives the place in line, 1 for the next to start.
            job.progress.queue_position = position - 1
            job.progress.message = f"queued, position {position}"
        return job

    async def _persist_and_dispatch(
        self, job: job_pb2.Job, spec_hash: str, first: job_pb2.JobEvent
    ) -> None:
        await self._store.create(job, spec_hash, first)
        await self.dispatch_stored([(job, first)])

    async def dispatch_stored(self, stored: Sequence[tuple[job_pb2.Job, job_pb2.JobEvent]]) -> None:
        """Send stored jobs on through the admission gate (at once, or held until their
        provider has room) and announce their first events."""
        await asyncio.gather(*(self._admission.dispatch(job) for job, _ in stored))
        # Tenant-wide feeds (the web page's history) learn of the jobs at once.
        await self._hub.publish([first for _, first in stored])
        for job, _ in stored:
            self._breakers.dispatched(job.provider)
            self._hedger.track(job)

    def _check_prompt(self, spec: job_pb2.JobSpec) -> None:
        violations = prompt_rules.validate(spec.prompt, spec.task, self._prompt_max_length)
        if violations:
            raise InvalidArgument("; ".join(v.message for v in violations))

    def check_route(self, spec: job_pb2.JobSpec) -> None:
        """InvalidArgument where selection would refuse `spec`'s provider or parameters, for a
        job made later: nothing is chosen or reserved now."""
        # The prompt a provider receives is prepared when the job is made; its limit waits.
        request = selection_request(spec, struct_to_dict(spec.parameters), prompt="")
        self._selector.check(request)

    async def check_inputs(self, tenant: str, spec: job_pb2.JobSpec) -> None:
        """InvalidArgument or NotFound unless the spec's input assets suit its task."""
        accepted = INPUT_MEDIA.get(spec.task)
        if accepted is None:
            if spec.input_asset_ids:
                raise InvalidArgument(f"{task_name(spec.task)} takes no input assets")
            return
        if not spec.input_asset_ids:
            raise InvalidArgument(
                f"{task_name(spec.task)} needs an input asset ({'/'.join(accepted)}*); "
                "upload one with AssetService.UploadAsset and pass its id in input_asset_ids"
            )
        check_one_input(task_name(spec.task), spec.input_asset_ids)
        for asset_id in spec.input_asset_ids:
            asset = await self._get_asset(tenant, asset_id)
            if not asset.media_type.startswith(accepted):
                raise InvalidArgument(
                    f"input asset {asset_id!r} is {asset.media_type}; "
                    f"{task_name(spec.task)} takes {'/'.join(accepted)}*"
                )

    async def _get_asset(self, tenant: str, asset_id: str) -> asset_pb2.Asset:
        try:
            reply = await self._assets.GetAsset(
                asset_service_pb2.GetAssetRequest(asset_id=asset_id),
                metadata=tenant_metadata(tenant),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"input asset {asset_id!r} not found") from exc
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"input asset {asset_id!r}: {exc.details()}") from exc
            raise Unavailable(f"storage unavailable: {exc.code().name}") from exc
        return reply.asset

    # ---- read -----------------------------------------------------------------------

    async def get(self, tenant: str, job_id: str) -> job_pb2.Job:
        if not job_id:
            raise InvalidArgument("job_id is required")
        job = await self._store.get(tenant, job_id) if limits.known_id(job_id) else None
        if job is None:
            raise NotFound(f"job {job_id[: limits.MAX_ID]!r} not found")
        return job

    async def list_jobs(
        self, tenant: str, request: job_service_pb2.ListJobsRequest
    ) -> tuple[list[job_pb2.Job], str]:
        # proto3 enums take any number; an undefined one matched nothing, where REST (and
        # Submit) refuse it.
        if request.task and request.task not in TASKS:
            raise InvalidArgument(f"task {request.task} is not a defined Task")
        undefined = [state for state in request.states if state not in STATES]
        if undefined:
            raise InvalidArgument(f"states {undefined} are not defined JobStates")
        page = await self._store.list_jobs(
            tenant,
            states=list(request.states),
            task=request.task,
            batch_id=request.batch_id,
            top_level_only=request.top_level_only,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return page.jobs, page.next_token

    async def providers(self, task: int = 0) -> list[provider_service_pb2.Provider]:
        providers = []
        for shared in self._catalog.providers(task):
            provider = provider_service_pb2.Provider()
            provider.CopyFrom(shared)
            providers.append(provider)
            provider.health.circuit = self._breakers.state(provider.name)
            provider.health.queued = await self._admission.queued(provider.name)
        return providers

    # ---- cancel -----------------------------------------------------------------------

    async def cancel(self, tenant: str, job_id: str, reason: str) -> job_pb2.Job:
        """Record CANCELLED, then tell workers: the running one stops, a later one skips it.
        A caller's reason is limited (limits.check_reason) before it gets here."""
        job = await self.get(tenant, job_id)
        if job.state in TERMINAL:
            raise FailedPrecondition(_already_ended(job))
        event = job_pb2.JobEvent(job_id=job_id, state=job_pb2.JOB_STATE_CANCELLED)
        event.error.code = "cancelled"
        event.error.message = reason or "cancelled by the caller"
        stamp(event.time)
        applied = await self._store.apply([Incoming(job_id, event)])
        if not applied:
            job = await self.get(tenant, job_id)
            raise FailedPrecondition(_already_ended(job))
        self._admission.drop(applied[0])
        await self._stopper.stop(job_id, event.error.message)
        await self._hub.publish(applied)
        if job.HasField("pipeline") and self.pipelines is not None:
            await self.pipelines.cancel_steps(tenant, job, event.error.message)
        return await self.get(tenant, job_id)

    # ---- watch ------------------------------------------------------------------------

    async def watch(self, tenant: str, job_id: str, after: int) -> AsyncIterator[Update]:
        """The job now, then each event after `after` exactly once, until the job ends."""
        if after < 0:
            raise InvalidArgument("after_sequence must be >= 0")
        with self._hub.listen(job_id) as listener:
            job = await self.get(tenant, job_id)
            yield job
            if job.state in TERMINAL and after >= job.last_sequence:
                return
            # The job may have moved on since the snapshot: the store first, then live. An
            # after_sequence past the job's last event is followed from that event instead,
            # so the stream still ends with the job, whose terminal sequence may be below it.
            start = min(after, job.last_sequence)
            async for event in self.follow(job_id, listener, start, read_first=True):
                if event.sequence > after:
                    yield event

    async def follow(
        self, job_id: str, listener: Listener, last: int, *, read_first: bool = False
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """Live events after `last`, each once, until the terminal one; with `read_first`
        the stored ones come first."""
        read = read_first
        listener.seen = last
        while True:
            if not read:
                heard = await listener.next()
                if heard is not None and heard.sequence <= last:
                    continue
                if heard is not None and heard.sequence == last + 1:
                    yield heard
                    last = listener.seen = heard.sequence
                    if heard.state in TERMINAL:
                        return
                    continue
                # A gap, a lag, or the hub's recheck: the store is the truth.
            read = False
            async with aclosing(self._store.replay(job_id, last)) as stored:
                async for item in stored:
                    yield item
                    last = listener.seen = item.sequence
                    if item.state in TERMINAL:
                        return


def refuse_pipeline(spec: job_pb2.JobSpec) -> None:
    """InvalidArgument for a pipeline spec where only a single job's may go (a batch's)."""
    if spec.HasField("pipeline"):
        raise InvalidArgument("a pipeline runs on its own: submit it with Submit or Generate")


def _already_ended(job: job_pb2.Job) -> str:
    """Why a finished job cannot be cancelled, in the words every client shows states in."""
    return f"job {job.id} has already ended ({state_name(job.state)}); nothing to cancel"
