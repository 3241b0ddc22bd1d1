"""The bridge's calls to the router have deadlines (GENMESH_ROUTER_TIMEOUT): a router that takes
every call and never answers gives DEADLINE_EXCEEDED (504) for every unary call and for every
stream that never sends its first message, instead of HTTP requests that hang; a stream that has
begun runs as long as the job does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.settings import Settings
from genmesh.v1 import (
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    provider_service_pb2_grpc,
)
from tests.gateway.conftest import bridge_http, read_sse, serving_grpc
from tests.infra import free_port

# The bridge's router timeout here, in seconds.
TIMEOUT = 1.0
# Generous, yet well short of the 30 s the bridge used to allow whatever its settings.
PATIENCE = 10.0
SPEC = {"task": "text-to-image", "prompt": "a red fox in snow"}


class _Hung(
    generate_service_pb2_grpc.GenerateServiceServicer,
    job_service_pb2_grpc.JobServiceServicer,
    provider_service_pb2_grpc.ProviderServiceServicer,
):
    """A router that takes every call and never answers, noting the time each call had left
    when it arrived (None: no deadline). WatchJob of job "slow" answers, but slowly."""

    def __init__(self) -> None:
        self.remaining: dict[str, float | None] = {}

    async def _hang(self, method: str, context: Any) -> None:
        self.remaining[method] = context.time_remaining()
        await asyncio.Event().wait()

    async def Submit(self, request: Any, context: Any) -> Any:
        await self._hang("Submit", context)

    async def SubmitBatch(self, request: Any, context: Any) -> Any:
        await self._hang("SubmitBatch", context)

    async def GetJob(self, request: Any, context: Any) -> Any:
        await self._hang("GetJob", context)

    async def ListJobs(self, request: Any, context: Any) -> Any:
        await self._hang("ListJobs", context)

    async def CancelJob(self, request: Any, context: Any) -> Any:
        await self._hang("CancelJob", context)

    async def ListProviders(self, request: Any, context: Any) -> Any:
        await self._hang("ListProviders", context)

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._hang("Generate", context)
        yield

    async def WatchJobs(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._hang("WatchJobs", context)
        yield

    async def WatchBatch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._hang("WatchBatch", context)
        yield

    async def WatchJob(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if request.job_id != "slow":
            await self._hang("WatchJob", context)
        job = job_pb2.Job(id="slow", state=job_pb2.JOB_STATE_PROCESSING, last_sequence=1)
        yield job_service_pb2.WatchJobResponse(job=job)
        # Longer than the timeout between two messages of a stream that has begun.
        await asyncio.sleep(2.5 * TIMEOUT)
        done = job_pb2.JobEvent(job_id="slow", sequence=2, state=job_pb2.JOB_STATE_COMPLETED)
        yield job_service_pb2.WatchJobResponse(event=done)


@pytest.fixture
async def hung() -> AsyncIterator[tuple[httpx.AsyncClient, _Hung]]:
    """A bridge whose router (on loopback) takes every call and never answers; the bridge gives
    it TIMEOUT seconds."""
    router = _Hung()
    adds = (
        generate_service_pb2_grpc.add_GenerateServiceServicer_to_server,
        job_service_pb2_grpc.add_JobServiceServicer_to_server,
        provider_service_pb2_grpc.add_ProviderServiceServicer_to_server,
    )
    async with serving_grpc(router, *adds) as address:
        free = f"127.0.0.1:{free_port()}"
        settings = Settings(router_addr=address, storage_addr=free, router_timeout=TIMEOUT)
        async with bridge_http(settings) as http:
            yield http, router


def assert_deadline(response: httpx.Response, name: str) -> None:
    assert response.status_code == 504, (name, response.text)
    assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED", name


async def test_a_hung_router_is_a_deadline_not_a_hang(
    hung: tuple[httpx.AsyncClient, _Hung],
) -> None:
    http, router = hung
    calls = {
        "Submit": ("POST", "/v1/jobs", SPEC),
        "SubmitBatch": ("POST", "/v1/batches", {"specs": [SPEC]}),
        "ListJobs": ("GET", "/v1/jobs", None),
        "GetJob": ("GET", "/v1/jobs/j_1", None),
        "CancelJob": ("POST", "/v1/jobs/j_1:cancel", None),
        "ListProviders": ("GET", "/v1/providers", None),
    }
    for name, (method, path, body) in calls.items():
        call = http.request(method, path, json=body)
        assert_deadline(await asyncio.wait_for(call, PATIENCE), name)
        # The router was given the setting, not a constant of the bridge's (the deadline
        # travels as a header, rounded up: about TIMEOUT, not exactly).
        remaining = router.remaining.get(name)
        assert remaining is not None and remaining < 2 * TIMEOUT, (name, remaining)


async def test_a_stream_the_router_never_opens_is_a_deadline(
    hung: tuple[httpx.AsyncClient, _Hung],
) -> None:
    http, router = hung
    opens = {
        "WatchJob": ("GET", "/v1/jobs/j_1/events", None),
        "WatchJobs": ("GET", "/v1/jobs:watch", None),
        "WatchBatch": ("GET", "/v1/batches/b_1/events", None),
        "Generate": ("POST", "/v1/jobs:generate", SPEC),
    }
    for name, (method, path, body) in opens.items():
        call = http.request(method, path, json=body)
        assert_deadline(await asyncio.wait_for(call, PATIENCE), name)
        # Only its first message is awaited with a deadline: the call itself has none.
        assert router.remaining[name] is None, name

    url = str(http.base_url).replace("http://", "ws://") + "/v1/jobs/j_1/ws"
    async with connect(url, proxy=None, open_timeout=PATIENCE) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), PATIENCE)
    assert message["error"]["code"] == "DEADLINE_EXCEEDED"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4504


async def test_a_stream_that_has_begun_is_not_cut_by_the_timeout(
    hung: tuple[httpx.AsyncClient, _Hung],
) -> None:
    http, _ = hung
    async with http.stream("GET", "/v1/jobs/slow/events") as response:
        assert response.status_code == 200
        events = await asyncio.wait_for(read_sse(response), PATIENCE)
    assert [event.event for event in events] == ["job", "message"]
    assert events[1].data["state"] == "JOB_STATE_COMPLETED"
