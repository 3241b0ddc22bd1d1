"""The error interceptor's wrapping of server-streaming handlers, and the status errors map to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.errors import status_of
from services.common.grpc_server import _parsed, _wrap_stream, grpc_server
from tests.infra import free_port


async def test_a_call_cancelled_mid_write_closes_the_handlers_generator() -> None:
    # gRPC's own loop over a yielded stream drops it unclosed when the call is cancelled while
    # a write waits (client gone, server stopping): the handler's generator (which holds a
    # blob file in DownloadAsset) was left to the garbage collector.
    closed = []
    writing = asyncio.Event()

    class StalledContext:
        async def write(self, item: int) -> None:
            writing.set()
            await asyncio.Event().wait()  # a client that stopped reading

    async def handler(request: Any, context: Any) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    running: set[asyncio.Task[Any]] = set()
    call = _wrap_stream(handler, "/test/Stream", _parsed, running)
    task = asyncio.create_task(call(object(), StalledContext()))
    await writing.wait()
    assert running == {task}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]
    assert running == set()


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


async def test_a_database_or_bus_out_of_reach_is_unavailable_not_internal() -> None:
    # What the router's store raises while PostgreSQL is down: the caller may retry.
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    try:
        with pytest.raises(OSError) as refused:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    broken = OperationalError(
        "SELECT 1", {}, Exception("connection closed"), connection_invalidated=True
    )
    for exc in (refused.value, broken, nats.errors.TimeoutError()):
        code, message = status_of(exc, "/test/Call")
        assert code == grpc.StatusCode.UNAVAILABLE, exc
        assert "retry" in message
    # Anything else stays an internal error, its details in the log only.
    failed = OperationalError("SELECT 1", {}, Exception("no such table: jobs"))
    assert status_of(failed, "/test/Call") == (grpc.StatusCode.INTERNAL, "internal error")


def test_a_full_database_disk_is_resource_exhausted(tmp_path: Path) -> None:
    # A real SQLITE_FULL, as SQLAlchemy raises it: the file may not grow past a few pages.
    engine = create_engine(f"sqlite:///{tmp_path / 'small.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA max_page_count = 8")
            conn.exec_driver_sql("CREATE TABLE t (b BLOB)")
        with pytest.raises(OperationalError) as full, engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (zeroblob(1000000))")
    finally:
        engine.dispose()
    code, message = status_of(full.value, "/test/Call")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk is full" in message
