"""The error interceptor's wrapping of server-streaming handlers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import _parsed, _wrap_stream, grpc_server


async def test_closing_the_wrapped_stream_closes_the_handlers_generator() -> None:
    # A caller that hangs up closes the wrapper; the handler's generator (which holds a blob
    # file in DownloadAsset) was left to the garbage collector, sometimes after the loop closed.
    closed = []

    async def handler(request: Any, context: Any) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    stream = _wrap_stream(handler, "/test/Stream", _parsed)(object(), None)
    assert await anext(stream) == 1
    await stream.aclose()
    assert closed == [True]


async def test_health_watch_streams_through_the_interceptor() -> None:
    # grpc_health's Watch is a coroutine that writes with context.write, not a generator:
    # the interceptor's wrapping once answered it INTERNAL.
    async with (
        grpc_server("127.0.0.1:0", []) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await asyncio.wait_for(call.read(), 10)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await running.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        second = await asyncio.wait_for(call.read(), 10)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()
