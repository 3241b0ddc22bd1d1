"""Request bodies read under a size limit: JSON bodies before FastAPI parses them (it reads a
body of any size into memory first), and any body as a bounded stream; and the messages made
of them, which must fit the gRPC services' limit too. Over a limit: TooLarge, a 413. A body
that stops arriving: BodyTimeout, a 408."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from google.protobuf.message import Message
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import BadRequest, BodyTimeout, TooLarge
from gateway.state import clients_of
from services.common.grpc_server import MAX_MESSAGE_BYTES

# The gRPC services refuse a message over this size (RESOURCE_EXHAUSTED); a JSON body is mostly
# larger than the message it carries, so one over it could not get through to them either (and
# fitting() checks the message itself).
MAX_JSON_BODY = MAX_MESSAGE_BYTES

M = TypeVar("M", bound=Message)


def fitting(request: M) -> M:
    """`request`, or TooLarge when it is over the size a gRPC service accepts. A JSON body under
    MAX_JSON_BODY can still make a larger message (a Struct spends 11 bytes on the number a JSON
    list holds in 2); sent, it would be refused by gRPC itself, with no reason to tell it from
    a RESOURCE_EXHAUSTED that means "retry later"."""
    size = request.ByteSize()
    if size > MAX_MESSAGE_BYTES:
        raise TooLarge(
            f"the request comes to {size} bytes as a message, over the limit of "
            f"{MAX_MESSAGE_BYTES} bytes"
        )
    return request


async def bounded_stream(
    request: Request, limit: int, refusal: str, pause: float
) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive; TooLarge(refusal) as soon as it is known to be over
    `limit` bytes: from Content-Length before any is read, else once that many have come.
    BodyTimeout when the client leaves it waiting `pause` seconds for the next chunk (or the
    first, from this call on)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(refusal)
    size = 0
    chunks = request.stream()
    try:
        while (chunk := await _next(chunks, pause)) is not None:
            size += len(chunk)
            if size > limit:
                raise TooLarge(refusal)
            yield chunk
    except ClientDisconnect:
        # Not the bridge's fault, so not an unexpected error with a traceback in the log.
        raise BadRequest("the client went away before the body ended") from None
    finally:
        await chunks.aclose()


async def _next(chunks: AsyncGenerator[bytes, None], pause: float) -> bytes | None:
    """The next chunk, or None after the last; BodyTimeout if none comes within `pause` s."""
    deadline = asyncio.timeout(pause)
    try:
        async with deadline:
            return await anext(chunks, None)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise BodyTimeout(
            f"the request body stopped arriving: nothing came for {pause:g} s"
        ) from None


class _BoundedRequest(Request):
    """Reads its body once, refusing it as soon as it is known to be over MAX_JSON_BODY, or
    once it pauses for longer than the bridge's body timeout."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            # Where Starlette's own body() keeps it, so json() and stream() find it.
            refusal = f"the request body is over the limit of {MAX_JSON_BODY} bytes"
            body = bounded_stream(self, MAX_JSON_BODY, refusal, clients_of(self).body_timeout)
            self._body = b"".join([chunk async for chunk in body])
        return self._body


class BoundedBodyRoute(APIRoute):
    """An APIRoute (as `route_class`) whose body is refused past MAX_JSON_BODY with 413, and
    with 408 when it stops arriving (Settings.http_body_timeout)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            request = _BoundedRequest(request.scope, request.receive)
            # Read here, not inside FastAPI's handler, which turns any error reading the body
            # into a bare 400.
            await request.body()
            return await handle(request)

        return bounded
