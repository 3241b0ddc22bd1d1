"""REST routes over GenerateService.Submit and SubmitBatch, JobService and ProviderService,
one per RPC."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from gateway import schema
from gateway.bodies import BoundedBodyRoute, fitting
from gateway.convert import (
    CancelBody,
    JobSpecBody,
    SubmitBatchBody,
    parse_state,
    parse_task,
    to_json,
)
from gateway.errors import bad_input, documented
from gateway.ids import JobId
from gateway.state import ClientsDep, TenantDep, metadata
from genmesh.v1 import (
    generate_service_pb2,
    job_pb2,
    job_service_pb2,
    provider_service_pb2,
)

# Bodies are JSON: refused past a limit before parsing.
router = APIRouter(route_class=BoundedBodyRoute)


@router.post(
    "/v1/jobs",
    status_code=201,
    tags=["jobs"],
    response_model=schema.Job,
    response_model_exclude_none=True,
    responses=documented(404, 408, 409, 413, 429),
)
async def submit_job(body: JobSpecBody, clients: ClientsDep, tenant: TenantDep) -> dict[str, Any]:
    """GenerateService.Submit: create a job; it comes back QUEUED.

    404 names an input asset that does not exist; 409 reuses an idempotency key with another
    spec; 413 for a body (or the message made of it) over the size limit; 429 when the chosen
    provider's queue is at its bound (retry later); 503 means no provider serves the task right
    now."""
    reply = await clients.generate.Submit(
        fitting(generate_service_pb2.SubmitRequest(spec=body.to_proto())),
        metadata=metadata(tenant),
        timeout=clients.router_timeout,
    )
    return to_json(reply.job)


@router.post(
    "/v1/batches",
    status_code=201,
    tags=["jobs"],
    response_model=schema.SubmitBatchResponse,
    response_model_exclude_none=True,
    responses=documented(404, 408, 409, 413, 429),
)
async def submit_batch(
    body: SubmitBatchBody, clients: ClientsDep, tenant: TenantDep
) -> dict[str, Any]:
    """GenerateService.SubmitBatch: one job per spec, all or none; the batch id and the jobs
    (QUEUED) in the order of the specs. A bad spec fails the whole call and its message names
    it (`specs[3]: …`); nothing is created then. Watch the batch with
    GET /v1/batches/{batch_id}/events (or /ws); list its jobs with GET /v1/jobs?batch_id=…
    413 and 429 as POST /v1/jobs."""
    request = fitting(generate_service_pb2.SubmitBatchRequest(specs=body.to_proto()))
    reply = await clients.generate.SubmitBatch(
        request, metadata=metadata(tenant), timeout=clients.router_timeout
    )
    return to_json(reply)


@router.get(
    "/v1/jobs",
    tags=["jobs"],
    response_model=schema.ListJobsResponse,
    response_model_exclude_none=True,
    responses=documented(),
)
async def list_jobs(
    clients: ClientsDep,
    tenant: TenantDep,
    page_size: Annotated[int, Query(ge=0, le=500, description="1..500; 0 means 50")] = 0,
    page_token: Annotated[str, Query(description="next_page_token of the page before")] = "",
    state: Annotated[
        list[str] | None, Query(description="Repeatable: queued, processing, completed, …")
    ] = None,
    task: Annotated[str, Query(description="Only jobs of this task, e.g. text-to-image")] = "",
    batch_id: Annotated[str, Query(description="Only jobs of this batch (POST /v1/batches)")] = "",
    top_level_only: Annotated[
        bool,
        Query(
            description="Leave out the jobs of pipelines' steps (each is named in its "
            "pipeline's pipeline.steps[].job_id): only pipelines and jobs submitted on their own"
        ),
    ] = False,
) -> dict[str, Any]:
    """JobService.ListJobs: the tenant's jobs, newest first, a page at a time."""
    states = [parse_state(s) for s in state or ()]
    kind = parse_task(task) if task else job_pb2.TASK_UNSPECIFIED
    with bad_input("page_token"):
        request = job_service_pb2.ListJobsRequest(
            page_size=page_size,
            page_token=page_token,
            states=states,
            task=kind,
            batch_id=batch_id,
            top_level_only=top_level_only,
        )
    reply = await clients.jobs.ListJobs(
        request, metadata=metadata(tenant), timeout=clients.router_timeout
    )
    return to_json(reply)


@router.get(
    "/v1/jobs/{job_id:id}",
    tags=["jobs"],
    response_model=schema.Job,
    response_model_exclude_none=True,
    responses=documented(404),
)
async def get_job(job_id: JobId, clients: ClientsDep, tenant: TenantDep) -> dict[str, Any]:
    """JobService.GetJob: the job as the router has recorded it."""
    with bad_input("job_id"):
        request = job_service_pb2.GetJobRequest(job_id=job_id)
    reply = await clients.jobs.GetJob(
        request, metadata=metadata(tenant), timeout=clients.router_timeout
    )
    return to_json(reply.job)


@router.post(
    "/v1/jobs/{job_id:id}:cancel",
    tags=["jobs"],
    response_model=schema.Job,
    response_model_exclude_none=True,
    responses=documented(404, 408, 409, 413),
)
async def cancel_job(
    job_id: JobId,
    clients: ClientsDep,
    tenant: TenantDep,
    body: Annotated[CancelBody | None, Body()] = None,
) -> dict[str, Any]:
    """JobService.CancelJob: stop a queued or running job; 409 when it has already ended, 413
    for a body over the size limit."""
    with bad_input("cancel request"):
        request = job_service_pb2.CancelJobRequest(
            job_id=job_id, reason=body.reason if body else ""
        )
    request = fitting(request)
    reply = await clients.jobs.CancelJob(
        request, metadata=metadata(tenant), timeout=clients.router_timeout
    )
    return to_json(reply.job)


@router.get(
    "/v1/providers",
    tags=["providers"],
    response_model=schema.ListProvidersResponse,
    response_model_exclude_none=True,
    responses=documented(),
)
async def list_providers(
    clients: ClientsDep,
    task: Annotated[str, Query(description="Only providers serving this task")] = "",
) -> dict[str, Any]:
    """ProviderService.ListProviders: each provider's tasks, parameters, cost and health."""
    request = provider_service_pb2.ListProvidersRequest(
        task=parse_task(task) if task else job_pb2.TASK_UNSPECIFIED
    )
    reply = await clients.providers.ListProviders(request, timeout=clients.router_timeout)
    return to_json(reply)
