"""Routes over GenerateService, JobService and ProviderService, including the live streams."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeAlias

import grpc
from fastapi import APIRouter, Body, Header, Query, WebSocket
from fastapi.responses import StreamingResponse

from gateway.convert import CancelBody, JobSpecBody, parse_state, parse_task, to_json
from gateway.errors import BadRequest, error_body, http_status
from gateway.state import RPC_TIMEOUT, Clients, ClientsDep, TenantDep, metadata
from genmesh.v1 import (
    generate_service_pb2,
    job_pb2,
    job_service_pb2,
    provider_service_pb2,
)

log = logging.getLogger("gateway.jobs")
router = APIRouter()

WatchCall: TypeAlias = grpc.aio.UnaryStreamCall[
    job_service_pb2.WatchJobRequest, job_service_pb2.WatchJobResponse
]


@router.post("/v1/jobs", status_code=201)
async def submit_job(body: JobSpecBody, clients: ClientsDep, tenant: TenantDep) -> dict[str, Any]:
    """GenerateService.Submit: the job as created (QUEUED)."""
    reply = await clients.generate.Submit(
        generate_service_pb2.SubmitRequest(spec=body.to_proto()),
        metadata=metadata(tenant),
        timeout=RPC_TIMEOUT,
    )
    return to_json(reply.job)


@router.get("/v1/jobs")
async def list_jobs(
    clients: ClientsDep,
    tenant: TenantDep,
    page_size: int = 0,
    page_token: str = "",
    state: Annotated[list[str] | None, Query()] = None,
    task: str = "",
) -> dict[str, Any]:
    """JobService.ListJobs, newest first; `state` may repeat."""
    request = job_service_pb2.ListJobsRequest(
        page_size=page_size,
        page_token=page_token,
        states=[parse_state(s) for s in state or ()],
        task=parse_task(task) if task else job_pb2.TASK_UNSPECIFIED,
    )
    reply = await clients.jobs.ListJobs(request, metadata=metadata(tenant), timeout=RPC_TIMEOUT)
    return to_json(reply)


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, clients: ClientsDep, tenant: TenantDep) -> dict[str, Any]:
    reply = await clients.jobs.GetJob(
        job_service_pb2.GetJobRequest(job_id=job_id), metadata=metadata(tenant), timeout=RPC_TIMEOUT
    )
    return to_json(reply.job)


@router.post("/v1/jobs/{job_id}:cancel")
async def cancel_job(
    job_id: str,
    clients: ClientsDep,
    tenant: TenantDep,
    body: Annotated[CancelBody | None, Body()] = None,
) -> dict[str, Any]:
    """JobService.CancelJob; 409 when the job has already ended."""
    reply = await clients.jobs.CancelJob(
        job_service_pb2.CancelJobRequest(job_id=job_id, reason=body.reason if body else ""),
        metadata=metadata(tenant),
        timeout=RPC_TIMEOUT,
    )
    return to_json(reply.job)


@router.get("/v1/providers")
async def list_providers(clients: ClientsDep, task: str = "") -> dict[str, Any]:
    request = provider_service_pb2.ListProvidersRequest(
        task=parse_task(task) if task else job_pb2.TASK_UNSPECIFIED
    )
    reply = await clients.providers.ListProviders(request, timeout=RPC_TIMEOUT)
    return to_json(reply)


async def _open_watch(
    clients: Clients, tenant: str, job_id: str, after: int
) -> tuple[WatchCall, job_pb2.Job]:
    """Start WatchJob and wait for the snapshot, so NOT_FOUND becomes a 404, not a broken stream."""
    call: WatchCall = clients.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after),
        metadata=metadata(tenant),
    )
    try:
        first = await call.read()
        if first is grpc.aio.EOF or not first.HasField("job"):
            raise RuntimeError("WatchJob did not start with the job")
    except BaseException:
        call.cancel()
        raise
    return call, first.job


async def _events(call: WatchCall) -> AsyncIterator[job_pb2.JobEvent]:
    while True:
        reply = await call.read()
        if reply is grpc.aio.EOF:
            return
        if reply.HasField("event"):
            yield reply.event


def _sse(data: dict[str, Any], *, event: str = "", id: int | None = None) -> str:
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


@router.get("/v1/jobs/{job_id}/events")
async def job_events(
    job_id: str,
    clients: ClientsDep,
    tenant: TenantDep,
    after_sequence: int = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """WatchJob as Server-Sent Events: an `event: job` snapshot, then one `id: <sequence>` per
    JobEvent; a reconnecting EventSource's Last-Event-ID wins over after_sequence."""
    if last_event_id:
        try:
            after_sequence = int(last_event_id)
        except ValueError:
            message = f"Last-Event-ID must be a sequence number, not {last_event_id!r}"
            raise BadRequest(message) from None
    call, job = await _open_watch(clients, tenant, job_id, after_sequence)

    async def stream() -> AsyncIterator[str]:
        # Starlette cancels this generator when the client goes away; `finally` ends the call.
        try:
            yield _sse(to_json(job), event="job")
            async for event in _events(call):
                yield _sse(to_json(event), id=event.sequence)
        except grpc.aio.AioRpcError as e:
            # Headers are sent: report in-band, the client reconnects with Last-Event-ID.
            yield _sse(error_body(e.code().name, e.details() or ""), event="error")
        finally:
            call.cancel()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.websocket("/v1/jobs/{job_id}/ws")
async def job_socket(
    websocket: WebSocket,
    job_id: str,
    clients: ClientsDep,
    tenant: TenantDep,
    after_sequence: int = 0,
) -> None:
    """WatchJob over a WebSocket: the job snapshot, then each JobEvent; closes after the end.
    Errors arrive as {"error": ...} followed by close code 4000 + HTTP status."""
    await websocket.accept()
    try:
        call, job = await _open_watch(clients, tenant, job_id, after_sequence)
    except grpc.aio.AioRpcError as e:
        await _close_with_error(websocket, e)
        return

    async def forward() -> None:
        await websocket.send_json(to_json(job))
        async for event in _events(call):
            await websocket.send_json(to_json(event))

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    # Race the stream against the client leaving, so a closed tab cancels the WatchJob call.
    sender = asyncio.create_task(forward())
    receiver = asyncio.create_task(until_disconnect())
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        call.cancel()
    if sender not in done:
        return  # the client left
    error = sender.exception()
    if isinstance(error, grpc.aio.AioRpcError):
        await _close_with_error(websocket, error)
    elif error is not None:
        log.error("websocket watch failed", exc_info=error)
        await websocket.close(code=1011)
    else:
        await websocket.close(code=1000)


async def _close_with_error(websocket: WebSocket, error: grpc.aio.AioRpcError) -> None:
    status = http_status(error.code())
    code, message = error.code().name, error.details() or ""
    if status == 500:
        code, message = "INTERNAL", "internal error"
    await websocket.send_json(error_body(code, message))
    await websocket.close(code=4000 + status)
