"""Routes whose JSON body is read under a size limit before FastAPI parses it: FastAPI itself
reads a body of any size into memory first."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import BadRequest, TooLarge
from services.common.grpc_server import MAX_MESSAGE_BYTES

# The gRPC services refuse a message over this size (RESOURCE_EXHAUSTED); a JSON body is larger
# than the message it carries, so one over it could not get through to them either.
MAX_JSON_BODY = MAX_MESSAGE_BYTES


class _BoundedRequest(Request):
    """Reads its body once, refusing it as soon as it is known to be over MAX_JSON_BODY."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            # Where Starlette's own body() keeps it, so json() and stream() find it.
            self._body = await self._read()
        return self._body

    async def _read(self) -> bytes:
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_JSON_BODY:
            raise _too_large()
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_JSON_BODY:
                    raise _too_large()
                chunks.append(chunk)
        except ClientDisconnect:
            # Not the bridge's fault, so not an unexpected error with a traceback in the log.
            raise BadRequest("the client went away before the body ended") from None
        return b"".join(chunks)


class BoundedBodyRoute(APIRoute):
    """An APIRoute (as `route_class`) whose body is refused past MAX_JSON_BODY with 429."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            request = _BoundedRequest(request.scope, request.receive)
            # Read here, not inside FastAPI's handler, which turns any error reading the body
            # into a bare 400.
            await request.body()
            return await handle(request)

        return bounded


def _too_large() -> TooLarge:
    return TooLarge(f"the request body is over the limit of {MAX_JSON_BODY} bytes")
