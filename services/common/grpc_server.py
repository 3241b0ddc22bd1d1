"""One way to run a gRPC server: error mapping, health, reflection and a graceful stop."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.errors import CannotStart, InvalidArgument, reason_metadata, status_of

# Servicer registration: (add_XServicer_to_server, servicer instance, full service name).
Registration = tuple[Callable[[Any, grpc.aio.Server], None], object, str]

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
log = logging.getLogger(__name__)

# Seconds past the grace period that stopping a server may take before it is left behind.
STOP_SLACK = 5.0


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns MeshError into its status code; anything else is INTERNAL with a logged traceback.
    A request protobuf cannot parse (nested past its depth limit) is INVALID_ARGUMENT."""

    def __init__(self) -> None:
        # The tasks of handlers still running, so a stopping server can wait for them.
        self.running: set[asyncio.Task[Any]] = set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        parse = _lenient(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, _parsed, self.running),
                parse,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, _parsed_stream, self.running),
                parse,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, _parsed, self.running),
                parse,
                handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method, _parsed_stream, self.running),
                parse,
                handler.response_serializer,
            )
        return handler


@dataclass(frozen=True)
class _Unparsed:
    """A request message protobuf refused, passed on so the handler's error mapping sees it."""

    error: DecodeError


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer` that returns _Unparsed instead of raising: gRPC would answer a raised
    DecodeError with UNKNOWN and the exception's text."""
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return _Unparsed(exc)

    return parse


def _parsed(request: Any) -> Any:
    if isinstance(request, _Unparsed):
        raise InvalidArgument(f"the request cannot be parsed: {request.error}")
    return request


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _parsed(request)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_of(exc, method)
    await context.abort(code, message, reason_metadata(exc))


@contextmanager
def _tracked(running: set[asyncio.Task[Any]]) -> Iterator[None]:
    """Hold the current task in `running` for the duration of the block."""
    task = asyncio.current_task()
    assert task is not None
    running.add(task)
    try:
        yield
    finally:
        running.discard(task)


def _wrap_unary(
    fn: Callable[..., Any],
    method: str,
    parsed: Callable[[Any], Any],
    running: set[asyncio.Task[Any]],
) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with _tracked(running):
            try:
                return await fn(parsed(request), context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await _abort(context, exc, method)

    return call


def _wrap_stream(
    fn: Callable[..., Any],
    method: str,
    parsed: Callable[[Any], Any],
    running: set[asyncio.Task[Any]],
) -> Callable[..., Any]:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
        try:
            # aclosing: closing this generator closes the servicer's, releasing what it holds
            # (a blob file) now rather than whenever it is collected, which may be after the
            # loop has closed.
            items = fn(parsed(request), context)
            if inspect.isawaitable(items):
                # A handler that writes with context.write (grpc_health's Watch) returns a
                # coroutine rather than a generator.
                await items
                return
            async with aclosing(items):
                async for item in items:
                    yield item
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc, method)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> None:
        # Written here rather than yielded to gRPC: a call cancelled while a write waits (the
        # client gone, the server stopping) unwinds through aclosing here, whereas gRPC's own
        # loop over a yielded stream drops the generator unclosed.
        items = stream(request, context)
        with _tracked(running):
            async with aclosing(items):
                async for item in items:
                    await context.write(item)

    return call


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises this to unwind the handler; it must pass through untouched.
    return isinstance(exc, grpc.aio.AbortError)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def grpc_server(
    address: str,
    registrations: Sequence[Registration],
    *,
    grace: float = 5.0,
) -> AsyncIterator[RunningServer]:
    """Serve the given servicers plus health and reflection on `address` (port 0 picks one).

    On exit: health goes NOT_SERVING, then the server stops with `grace` seconds for calls.
    """
    interceptor = ErrorInterceptor()
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = []
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # what grpcio raises for a port it cannot bind, all it says
        port = 0
    if port == 0:
        raise CannotStart(
            f"cannot listen on {address}: the port is in use, or the host is not one of "
            "this machine's addresses"
        )
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield RunningServer(server, port, health_servicer)
    finally:
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            # However a handler behaves, a stopping service must not hang here: after the
            # grace period and some slack the server is left behind.
            async with asyncio.timeout(grace + STOP_SLACK):
                await server.stop(grace)
                # stop() returns before the handlers it cancelled have unwound: what they hold
                # (a blob file) must be released before the service closes the rest and goes.
                if interceptor.running:
                    await asyncio.wait(set(interceptor.running))
        except TimeoutError:
            log.warning(
                "gRPC server on %s did not stop within %.0fs; leaving it",
                address,
                grace + STOP_SLACK,
            )
