"""The bridge carries a live stream across a router that goes away mid-stream and comes back
(a fake router, really stopped and started again on its port), sending the client each
message once; a stream with no resume point, or a router's own error, ends as before."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.errors import MESH_UNREACHABLE
from gateway.settings import Settings
from genmesh.v1 import (
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from tests.gateway.conftest import SseEvent, bridge_http, iter_sse
from tests.infra import free_port

# The job's events: 1 and 2 come before the router goes, 3 (the end) after.
CUT = 2
LAST = 3
# Seconds the bridge keeps trying: far longer than a fake router takes to come back.
WINDOW = 30.0
PATIENCE = 30.0
SPEC = {"task": "text-to-image", "prompt": "a red fox in snow"}


def _job(job_id: str) -> job_pb2.Job:
    return job_pb2.Job(id=job_id, state=job_pb2.JOB_STATE_PROCESSING)


def _event(job_id: str, sequence: int) -> job_pb2.JobEvent:
    state = job_pb2.JOB_STATE_COMPLETED if sequence == LAST else job_pb2.JOB_STATE_PROCESSING
    return job_pb2.JobEvent(job_id=job_id, sequence=sequence, state=state)


class _Router(
    generate_service_pb2_grpc.GenerateServiceServicer, job_service_pb2_grpc.JobServiceServicer
):
    """Streams as the router does, but each stream stops after event CUT, the first time,
    until the server goes (`cut` says when); or, with `refuse`, ends it with that error."""

    def __init__(self, refuse: tuple[grpc.StatusCode, str] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.cut = asyncio.Event()
        self.refuse = refuse

    async def _stop_at(self, sequence: int, context: grpc.aio.ServicerContext) -> None:
        if sequence != CUT or self.cut.is_set():
            return
        if self.refuse is not None:
            self.cut.set()
            await context.abort(*self.refuse)
        self.cut.set()
        await asyncio.Event().wait()

    async def WatchJob(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls.append(("WatchJob", request))
        yield job_service_pb2.WatchJobResponse(job=_job(request.job_id))
        for sequence in range(request.after_sequence + 1, LAST + 1):
            yield job_service_pb2.WatchJobResponse(event=_event(request.job_id, sequence))
            await self._stop_at(sequence, context)

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls.append(("Generate", request))
        yield generate_service_pb2.GenerateResponse(job=_job("j_new"))
        for sequence in range(1, LAST + 1):
            yield generate_service_pb2.GenerateResponse(event=_event("j_new", sequence))
            await self._stop_at(sequence, context)

    async def WatchJobs(self, request: Any, context: Any) -> AsyncIterator[Any]:
        # A feed opened at a cursor sends what followed it again: a cursor comes only after
        # a burst, and the router went before sending the one after events 1 and 2.
        self.calls.append(("WatchJobs", request))
        yield job_service_pb2.WatchJobsResponse(cursor=request.cursor or "c0")
        for sequence in range(1, LAST + 1):
            yield job_service_pb2.WatchJobsResponse(event=_event("j_1", sequence))
            await self._stop_at(sequence, context)
        yield job_service_pb2.WatchJobsResponse(cursor=f"c{LAST}")

    async def WatchBatch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls.append(("WatchBatch", request))
        yield job_service_pb2.WatchBatchResponse(summary=job_service_pb2.BatchSummary(total=1))
        yield job_service_pb2.WatchBatchResponse(event=_event("j_1", 1))
        await self._stop_at(CUT, context)


def _router(refuse: tuple[grpc.StatusCode, str] | None = None) -> _Router:
    return _Router(refuse)  # type: ignore[abstract]  # the other calls answer UNIMPLEMENTED


async def _start(router: _Router, address: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    generate_service_pb2_grpc.add_GenerateServiceServicer_to_server(router, server)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(router, server)
    assert server.add_insecure_port(address)
    await server.start()
    return server


def _bridge_settings(held_port: int, window: float) -> tuple[str, Settings]:
    """The router's address on the held port, and a bridge's settings that call it there."""
    address = f"127.0.0.1:{held_port}"
    storage = f"127.0.0.1:{free_port()}"  # never called
    settings = Settings(
        router_addr=address, storage_addr=storage, stream_resume_window=window, shutdown_grace=1
    )
    return address, settings


async def _through_a_restart(
    held_port: int, router: _Router, method: str, path: str, window: float = WINDOW
) -> list[SseEvent]:
    """The SSE stream `method path` of a bridge whose router is stopped once `router` says
    the stream is cut, and started again on the same port; everything the client got."""
    address, settings = _bridge_settings(held_port, window)
    first = await _start(router, address)
    second: grpc.aio.Server | None = None
    got: list[SseEvent] = []
    try:
        async with bridge_http(settings) as http:
            body = SPEC if method == "POST" else None
            async with http.stream(method, path, json=body) as response:
                assert response.status_code == 200, await response.aread()

                async def read() -> None:
                    async for event in iter_sse(response):
                        got.append(event)
                        if event.event == "cursor" and event.id == f"c{LAST}":
                            return  # a feed never ends by itself

                reading = asyncio.create_task(read())
                await asyncio.wait_for(router.cut.wait(), PATIENCE)
                await first.stop(0)
                second = await _start(router, address)
                await asyncio.wait_for(reading, PATIENCE)
    finally:
        await first.stop(0)
        if second is not None:
            await second.stop(0)
    return got


def _sequences(got: list[SseEvent]) -> list[int]:
    return [int(e.data["sequence"]) for e in got if e.event == "message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/jobs/j_1/events"), ("POST", "/v1/jobs:generate")],
    ids=["watch", "generate"],
)
async def test_a_jobs_stream_carries_on_past_a_router_restart(
    held_port: int, method: str, path: str
) -> None:
    router = _router()
    got = await _through_a_restart(held_port, router, method, path)
    assert [e.event for e in got] == ["job", "message", "message", "message"]
    assert _sequences(got) == [1, 2, 3]
    assert [e.id for e in got[1:]] == ["1", "2", "3"]
    assert got[-1].data["state"] == "JOB_STATE_COMPLETED"
    # Opened again as WatchJob of the job, after the last event the client had.
    job_id = got[0].data["id"]
    assert [(name, r.job_id, r.after_sequence) for name, r in router.calls[1:]] == [
        ("WatchJob", job_id, CUT)
    ]


async def test_the_feed_carries_on_from_its_cursor_without_repeating(held_port: int) -> None:
    router = _router()
    got = await _through_a_restart(held_port, router, "GET", "/v1/jobs:watch")
    # The new feed sent c0, 1, 2 again: none of it reached the client twice.
    assert [(e.event, e.id) for e in got] == [
        ("cursor", "c0"),
        ("message", None),
        ("message", None),
        ("message", None),
        ("cursor", f"c{LAST}"),
    ]
    assert _sequences(got) == [1, 2, 3]
    assert [r.cursor for _, r in router.calls] == ["", "c0"]


async def test_a_batch_stream_has_no_resume_point_and_ends_as_before(held_port: int) -> None:
    router = _router()
    got = await _through_a_restart(held_port, router, "GET", "/v1/batches/b_1/events")
    assert [e.event for e in got] == ["summary", "message", "error"]
    assert got[-1].data == {"error": {"code": "UNAVAILABLE", "message": MESH_UNREACHABLE}}
    assert [name for name, _ in router.calls] == ["WatchBatch"]


async def test_a_window_of_zero_ends_the_stream_as_before(held_port: int) -> None:
    router = _router()
    got = await _through_a_restart(held_port, router, "GET", "/v1/jobs/j_1/events", window=0)
    assert [e.event for e in got] == ["job", "message", "message", "error"]
    assert got[-1].data == {"error": {"code": "UNAVAILABLE", "message": MESH_UNREACHABLE}}
    assert len(router.calls) == 1


@pytest.mark.parametrize(
    ("code", "details", "close"),
    [
        (grpc.StatusCode.UNAVAILABLE, "no provider serves text-to-image (providers: none)", 4503),
        (grpc.StatusCode.INTERNAL, "internal error", 4500),
        (grpc.StatusCode.NOT_FOUND, "no job j_1", 4404),
    ],
    ids=["unavailable", "internal", "not-found"],
)
async def test_the_routers_own_error_is_not_retried(
    held_port: int, code: grpc.StatusCode, details: str, close: int
) -> None:
    router = _router(refuse=(code, details))
    address, settings = _bridge_settings(held_port, WINDOW)
    server = await _start(router, address)
    try:
        async with bridge_http(settings) as http:
            url = str(http.base_url).replace("http://", "ws://") + "/v1/jobs/j_1/ws"
            messages: list[Any] = []
            async with connect(url, proxy=None, open_timeout=10) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        messages.append(await asyncio.wait_for(ws.recv(), PATIENCE))
    finally:
        await server.stop(0)
    assert len(router.calls) == 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == close
    assert [next(iter(json.loads(m))) for m in messages] == ["job", "event", "event", "error"]
    assert json.loads(messages[-1])["error"] == {"code": code.name, "message": details}
