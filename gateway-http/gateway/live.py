"""Live streams: WatchJob, WatchJobs, WatchBatch and Generate as Server-Sent Events and
WebSockets.

Every message is the RPC's response in proto3 JSON ({"job": …}, {"event": …}, {"cursor": …},
{"summary": …}); SSE carries the same payloads with the sequence (one job) or the cursor (all
jobs) as the event id, so a reconnecting EventSource resumes by itself through Last-Event-ID.
A batch's stream has no resume point: reconnecting starts again from each job as it is now.
The others are carried across a lost router by the bridge itself (gateway.resuming).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Header, Query, WebSocket
from fastapi.responses import StreamingResponse

from gateway.bodies import BoundedBodyRoute, fitting
from gateway.convert import JobSpecBody, to_json
from gateway.errors import BadRequest, bad_input, documented, error_body, rpc_error_body
from gateway.ids import BatchId, JobId
from gateway.relay import FellBehind, ReadAhead
from gateway.resuming import FeedPoint, JobPoint, Message, Stream, resuming
from gateway.state import Clients, ClientsDep, StreamsDep, TenantDep, metadata
from gateway.stopping import LiveStreams
from genmesh.v1 import generate_service_pb2, job_service_pb2
from services.common.channels import within

log = logging.getLogger("gateway.live")
# POST /v1/jobs:generate's body is JSON: refused past a limit before parsing.
router = APIRouter(route_class=BoundedBodyRoute)

# Seconds a slow client gets to take the "you fell behind" notice before the socket closes.
NOTICE_TIMEOUT = 5.0
MAX_SEQUENCE = 2**63 - 1


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


# One Server-Sent Event, as the OpenAPI document describes a text/event-stream item.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["job", "cursor", "summary", "error", "message"]},
        "id": {"type": "string"},
        "data": {
            "type": "string",
            "description": "JSON: a Job, JobEvent, cursor, BatchSummary or error",
        },
    },
    "required": ["data"],
}
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events; see the description for the events",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    }
}


class Position:
    """What a client has received, so it can be told where to resume."""

    def __init__(self, after_sequence: int = 0, cursor: str = "", batch: bool = False) -> None:
        self.after_sequence = after_sequence
        self.cursor = cursor
        self.feed = bool(cursor)
        self.batch = batch

    def saw(self, message: Message) -> None:
        if "cursor" in message:
            self.feed = True
            self.cursor = message["cursor"]
        elif "event" in message:
            self.after_sequence = int(message["event"]["sequence"])

    def resume(self) -> dict[str, str]:
        if self.batch:
            return {}
        if self.feed:
            return {"cursor": self.cursor}
        return {"after_sequence": str(self.after_sequence)}

    def hint(self) -> str:
        if self.batch:
            return "reconnect; the stream starts again with each job as it is now"
        return "reconnect with " + "&".join(f"{k}={v}" for k, v in self.resume().items())


# ---- mesh calls -----------------------------------------------------------------------------


async def _open(call: Any, seconds: float) -> Stream:
    """Wait for the first message, so a refused call becomes an HTTP error, not a broken stream;
    a router that sends none within `seconds` is DEADLINE_EXCEEDED (504). Later messages may be
    as far apart as the job's progress makes them."""
    try:
        first = await within(call, call.read(), seconds, "the router")
        if first is grpc.aio.EOF:
            raise RuntimeError("the mesh stream ended before its first message")
    except BaseException:
        call.cancel()
        raise
    return _messages(call, first)


async def _messages(call: Any, first: Any) -> Stream:
    try:
        yield to_json(first)
        while (reply := await call.read()) is not grpc.aio.EOF:
            yield to_json(reply)
    finally:
        call.cancel()


def _job_watcher(clients: Clients, tenant: str) -> Callable[[str, int], Awaitable[Stream]]:
    """Opens WatchJob of a job after a sequence."""

    def watch(job_id: str, after: int) -> Awaitable[Stream]:
        with bad_input("job_id"):
            request = job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)
        call = clients.jobs.WatchJob(request, metadata=metadata(tenant))
        return _open(call, clients.router_timeout)

    return watch


async def _watch_job(clients: Clients, tenant: str, job_id: str, after: int) -> Stream:
    point = JobPoint(_job_watcher(clients, tenant), job_id, after)
    return resuming(await point.open(), point, clients.resume_window)


def _watch_batch(clients: Clients, tenant: str, batch_id: str) -> Awaitable[Stream]:
    with bad_input("batch_id"):
        request = job_service_pb2.WatchBatchRequest(batch_id=batch_id)
    call = clients.jobs.WatchBatch(request, metadata=metadata(tenant))
    return _open(call, clients.router_timeout)


async def _watch_jobs(clients: Clients, tenant: str, cursor: str) -> Stream:
    def watch(cursor: str) -> Awaitable[Stream]:
        with bad_input("cursor"):
            request = job_service_pb2.WatchJobsRequest(cursor=cursor)
        call = clients.jobs.WatchJobs(request, metadata=metadata(tenant))
        return _open(call, clients.router_timeout)

    point = FeedPoint(watch, cursor)
    return resuming(await point.open(), point, clients.resume_window)


# ---- Server-Sent Events -----------------------------------------------------------------------


def _sse(data: Any, *, event: str = "", id: str = "") -> str:
    lines = [f"event: {event}"] if event else []
    if id:
        lines.append(f"id: {id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


def _sse_frame(message: Message) -> str:
    if "job" in message:
        return _sse(message["job"], event="job")
    if "cursor" in message:
        return _sse(message, event="cursor", id=message["cursor"])
    if "summary" in message:
        return _sse(message["summary"], event="summary")
    return _sse(message["event"], id=message["event"]["sequence"])


def _fell_behind(position: Position) -> Message:
    """The notice a client gets when it read too slowly: RESOURCE_EXHAUSTED and where to resume."""
    notice = f"the client fell behind; {position.hint()}"
    return {**error_body("RESOURCE_EXHAUSTED", notice), "resume": position.resume()}


def _event_stream(
    messages: Stream, limit: int, position: Position, feed: bool, streams: LiveStreams
) -> EventStream:
    async def body() -> AsyncIterator[str]:
        # Starlette cancels this generator when the client goes away; the relay ends the call.
        # When the bridge stops, the relay ends and so does the response, complete: the
        # client reconnects with Last-Event-ID as after any other end.
        try:
            with streams.open() as stopping:
                async with ReadAhead(messages, limit, until=stopping) as ahead:
                    async for message in ahead:
                        if feed and "event" in message:
                            yield _sse(message["event"])  # no id: Last-Event-ID stays the cursor
                        else:
                            yield _sse_frame(message)
                        position.saw(message)
        except FellBehind:
            yield _sse(_fell_behind(position), event="error")
        except grpc.aio.AioRpcError as e:
            # Headers are sent: report in-band; the client reconnects with Last-Event-ID.
            yield _sse(rpc_error_body(e)[1], event="error")

    return EventStream(body(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _last_event_id(value: str | None, fallback: int) -> int:
    if not value:
        return fallback
    try:
        after = int(value)
    except ValueError:
        raise BadRequest(f"Last-Event-ID must be a sequence number, not {value!r}") from None
    if not 0 <= after <= MAX_SEQUENCE:
        raise BadRequest(f"Last-Event-ID {after} is out of range")
    return after


@router.get(
    "/v1/jobs/{job_id:id}/events",
    tags=["live"],
    response_class=EventStream,
    responses={**_SSE_DOC, **documented(404)},
)
async def job_events(
    job_id: JobId,
    clients: ClientsDep,
    tenant: TenantDep,
    streams: StreamsDep,
    after_sequence: Annotated[int, Query(ge=0, le=MAX_SEQUENCE)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventStream:
    """JobService.WatchJob as Server-Sent Events: `event: job` with the job as it is now, then
    one event per JobEvent with `id: <sequence>`; the stream ends after the terminal event.
    A reconnecting EventSource's Last-Event-ID wins over after_sequence. A router lost
    mid-stream is the bridge's to resume, unseen (GENMESH_STREAM_RESUME_WINDOW); past that,
    `event: error` (UNAVAILABLE) ends the stream.

    The same stream as a WebSocket: `GET /v1/jobs/{job_id}/ws?after_sequence=N` sends
    `{"job": …}` then `{"event": …}` messages and closes with 1000 after the terminal event;
    errors arrive as `{"error": …}` and close with 4000 + the HTTP status (4404, 4429, …)."""
    after = _last_event_id(last_event_id, after_sequence)
    messages = await _watch_job(clients, tenant, job_id, after)
    return _event_stream(messages, clients.stream_buffer, Position(after), False, streams)


@router.get(
    "/v1/jobs:watch",
    tags=["live"],
    response_class=EventStream,
    responses={**_SSE_DOC, **documented()},
)
async def watch_jobs_events(
    clients: ClientsDep,
    tenant: TenantDep,
    streams: StreamsDep,
    cursor: Annotated[str, Query(description="From an earlier `cursor` event")] = "",
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventStream:
    """JobService.WatchJobs as Server-Sent Events: every event of every job of the tenant.
    `event: cursor` (id: the cursor) comes first and after each burst of events; each JobEvent
    is a plain message. A reconnecting EventSource resumes after its last cursor through
    Last-Event-ID; events after that cursor may come again, so drop any whose sequence is not
    above the last one seen for its job. The stream never ends on its own.

    The same feed as a WebSocket: `GET /v1/jobs:watch?cursor=C` (WebSocket upgrade) sends
    `{"cursor": …}` and `{"event": …}` messages."""
    cursor = last_event_id or cursor
    messages = await _watch_jobs(clients, tenant, cursor)
    return _event_stream(messages, clients.stream_buffer, Position(cursor=cursor), True, streams)


@router.get(
    "/v1/batches/{batch_id:id}/events",
    tags=["live"],
    response_class=EventStream,
    responses={**_SSE_DOC, **documented(404)},
)
async def batch_events(
    batch_id: BatchId, clients: ClientsDep, tenant: TenantDep, streams: StreamsDep
) -> EventStream:
    """JobService.WatchBatch as Server-Sent Events: `event: summary` (a BatchSummary: how many
    of the batch's jobs are queued, running, completed, failed, cancelled), `event: job` for
    each job as it is now, then every later JobEvent of its jobs as a plain message (each
    once, in sequence order per job; no id, since sequences are per job), with a new
    `event: summary` whenever a job ends. The stream ends once every job has ended; a
    reconnect starts again from the summary. Having no resume point, it ends with
    `event: error` (UNAVAILABLE) if the router serving it is lost.

    The same stream as a WebSocket: `GET /v1/batches/{batch_id}/ws` sends `{"summary": …}`,
    `{"job": …}` and `{"event": …}` messages and closes with 1000 after the last job ends."""
    messages = await _watch_batch(clients, tenant, batch_id)
    return _event_stream(messages, clients.stream_buffer, Position(batch=True), True, streams)


@router.post(
    "/v1/jobs:generate",
    tags=["live"],
    response_class=EventStream,
    responses={**_SSE_DOC, **documented(404, 408, 409, 413, 429)},
)
async def generate(
    body: JobSpecBody, clients: ClientsDep, tenant: TenantDep, streams: StreamsDep
) -> EventStream:
    """GenerateService.Generate: submit a job and stream it as Server-Sent Events like
    GET /v1/jobs/{job_id}/events (`event: job` first, then each JobEvent with its sequence as
    id). Errors before the stream starts are as POST /v1/jobs; to resume a cut stream, GET
    /v1/jobs/{job_id}/events with the last sequence seen."""
    request = fitting(generate_service_pb2.GenerateRequest(spec=body.to_proto()))
    call = clients.generate.Generate(request, metadata=metadata(tenant))
    first = await _open(call, clients.router_timeout)
    # Once the job exists (its first message), a lost router is carried as WatchJob of it.
    messages = resuming(first, JobPoint(_job_watcher(clients, tenant)), clients.resume_window)
    return _event_stream(messages, clients.stream_buffer, Position(), False, streams)


# ---- WebSockets ----------------------------------------------------------------------------


@router.websocket("/v1/jobs/{job_id:id}/ws")
async def job_socket(
    websocket: WebSocket,
    job_id: JobId,
    clients: ClientsDep,
    tenant: TenantDep,
    streams: StreamsDep,
    after_sequence: Annotated[int, Query(ge=0, le=MAX_SEQUENCE)] = 0,
) -> None:
    """WatchJob over a WebSocket (see GET /v1/jobs/{job_id}/events)."""
    await _serve_socket(
        websocket,
        lambda: _watch_job(clients, tenant, job_id, after_sequence),
        clients.stream_buffer,
        Position(after_sequence),
        streams,
    )


@router.websocket("/v1/jobs:watch")
async def jobs_socket(
    websocket: WebSocket,
    clients: ClientsDep,
    tenant: TenantDep,
    streams: StreamsDep,
    cursor: str = "",
) -> None:
    """WatchJobs over a WebSocket (see GET /v1/jobs:watch)."""
    await _serve_socket(
        websocket,
        lambda: _watch_jobs(clients, tenant, cursor),
        clients.stream_buffer,
        Position(cursor=cursor),
        streams,
    )


@router.websocket("/v1/batches/{batch_id:id}/ws")
async def batch_socket(
    websocket: WebSocket,
    batch_id: BatchId,
    clients: ClientsDep,
    tenant: TenantDep,
    streams: StreamsDep,
) -> None:
    """WatchBatch over a WebSocket (see GET /v1/batches/{batch_id}/events)."""
    await _serve_socket(
        websocket,
        lambda: _watch_batch(clients, tenant, batch_id),
        clients.stream_buffer,
        Position(batch=True),
        streams,
    )


async def _serve_socket(
    websocket: WebSocket,
    open_stream: Callable[[], Awaitable[Stream]],
    limit: int,
    position: Position,
    streams: LiveStreams,
) -> None:
    """Relay a mesh stream to a WebSocket until either side ends or the bridge stops (close
    1001, going away); errors close it 4000 + HTTP status after an {"error": …} message."""
    with streams.open() as stopping:
        await _relay(websocket, open_stream, limit, position, stopping)


async def _relay(
    websocket: WebSocket,
    open_stream: Callable[[], Awaitable[Stream]],
    limit: int,
    position: Position,
    stopping: asyncio.Event,
) -> None:
    await websocket.accept()
    try:
        messages = await open_stream()
    except grpc.aio.AioRpcError as e:
        await _close(websocket, *rpc_error_body(e))
        return
    except BadRequest as e:
        await _close(websocket, 400, error_body("INVALID_ARGUMENT", str(e)))
        return

    async def forward() -> None:
        async with ReadAhead(messages, limit, until=stopping) as ahead:
            async for message in ahead:
                await websocket.send_json(message)
                position.saw(message)

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    # Race the stream against the client leaving, so a closed tab cancels the mesh call.
    sender = asyncio.create_task(forward())
    receiver = asyncio.create_task(until_disconnect())
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
    if sender not in done:
        return  # the client left
    error = sender.exception()
    if error is None:
        # 1000: the stream is over; 1001: the bridge is stopping, so reconnect and resume.
        await websocket.close(code=1001 if stopping.is_set() else 1000)
    elif isinstance(error, FellBehind):
        await _close(websocket, 429, _fell_behind(position))
    elif isinstance(error, grpc.aio.AioRpcError):
        await _close(websocket, *rpc_error_body(error))
    else:
        log.error("websocket relay failed", exc_info=error)
        await _close(websocket, 500, error_body("INTERNAL", "internal error"), code=1011)


async def _close(websocket: WebSocket, status: int, body: Message, code: int = 0) -> None:
    # A stalled client may never take the notice: bounded, then the socket closes regardless.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(NOTICE_TIMEOUT):
            await websocket.send_json(body)
    with contextlib.suppress(Exception):
        await websocket.close(code=code or 4000 + status)
