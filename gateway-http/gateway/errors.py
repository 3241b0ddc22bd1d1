"""The one gRPC status -> HTTP table, and the handlers that render every error the same way."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from gateway.schema import ErrorBody
from services.common.errors import TOO_LARGE, reason_of

log = logging.getLogger("gateway")

STATUS_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 416,
    # Unless the refusal's reason says it was over a size limit: then 413 (rpc_http_status).
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    # The service's own words (an asset whose bytes are gone), unlike INTERNAL's and UNKNOWN's.
    grpc.StatusCode.DATA_LOSS: 500,
}

_DESCRIPTIONS: dict[int, str] = {
    400: "INVALID_ARGUMENT: the request is malformed or breaks a documented rule",
    404: "NOT_FOUND: no such job or asset for this tenant",
    408: "DEADLINE_EXCEEDED: the request body stopped arriving for longer than the bridge "
    "waits (GENMESH_HTTP_BODY_TIMEOUT); the connection closes and nothing was kept",
    409: "FAILED_PRECONDITION: the request conflicts with the resource's state",
    412: "FAILED_PRECONDITION: If-Match or If-Unmodified-Since is false for the asset; "
    "nothing is sent",
    413: "RESOURCE_EXHAUSTED: the body, upload or message is over a size limit; send less "
    "(retrying the same request will not help); nothing was kept",
    416: "OUT_OF_RANGE: the requested byte range is outside the asset",
    429: "RESOURCE_EXHAUSTED: a rate or queue limit was reached (e.g. the provider's queue "
    "bound); retry later",
    500: "INTERNAL: an unexpected error; details stay in the bridge's log (or DATA_LOSS: "
    "something stored is gone, such as an asset's bytes; retrying will not help)",
    503: "UNAVAILABLE: the mesh cannot serve this right now; retry with backoff",
    504: "DEADLINE_EXCEEDED: the mesh did not answer in time",
}
# Every route can meet these: bad input, or a mesh that is down, slow or broken.
COMMON = (400, 500, 503, 504)

# HTTP errors raised by the framework itself (unknown route, wrong method), named like gRPC codes.
_HTTP_TO_CODE: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "FAILED_PRECONDITION",
    416: "OUT_OF_RANGE",
}


# The methods a 405's Allow may name (RFC 9110's, less CONNECT and TRACE, which no route takes).
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class BadRequest(Exception):
    """Input the bridge rejects before calling the mesh; rendered as INVALID_ARGUMENT / 400."""


@contextmanager
def bad_input(what: str) -> Iterator[None]:
    """Values protobuf refuses (text that is not UTF-8, numbers out of range) become a 400."""
    try:
        yield
    except (ValueError, TypeError, OverflowError, json_format.Error) as exc:
        raise BadRequest(f"{what}: {exc}") from None


class TooLarge(Exception):
    """A request body over one of the bridge's limits; rendered as RESOURCE_EXHAUSTED (what a
    gRPC server answers a message over its size limit) with 413 Content Too Large."""


class BodyTimeout(Exception):
    """The client stopped sending its body; rendered as DEADLINE_EXCEEDED with 408 Request
    Timeout, on a connection that then closes (what is left of the body is never read)."""


class PreconditionFailed(Exception):
    """A conditional request's If-Match or If-Unmodified-Since is false; rendered as
    FAILED_PRECONDITION with 412 Precondition Failed (RFC 9110, section 15.5.13)."""


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route may return, besides COMMON."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in sorted({*COMMON, *statuses})
    }


def http_status(code: grpc.StatusCode) -> int:
    return STATUS_TO_HTTP.get(code, 500)


def rpc_http_status(error: grpc.aio.AioRpcError) -> int:
    """The HTTP status of a failed mesh call: its code's, except that a RESOURCE_EXHAUSTED
    whose reason (services.common.errors.reason_of) says the request was too large is a 413
    rather than a 429, which would tell the client to send the same request again later."""
    code = error.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(error) == TOO_LARGE:
        return 413
    return http_status(code)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


# What gRPC's own transport says when a service cannot be reached or resolved names its
# address ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:50051",
# round_robin's "connections to all backends failing; ...", "errors resolving
# router.internal:50051"); a server that died mid-call, "Socket closed"; one that stopped
# with calls still running, "Cancelling all calls".
_TRANSPORT_DETAILS = re.compile(
    r"failed to connect|all backends failing|\b(ipv4|ipv6|unix|dns):|Socket closed"
    r"|Connection reset|Broken pipe|Cancelling all calls"
    r"|errors resolving|DNS resolution failed|address lookup failed",
    re.IGNORECASE,
)
MESH_UNREACHABLE = "a genmesh service the bridge calls did not answer; retry with backoff"


def out_of_reach(error: grpc.aio.AioRpcError) -> bool:
    """Whether a call failed because gRPC lost or could not reach the service (down,
    restarting, unresolvable), rather than because the service itself answered UNAVAILABLE."""
    details = error.details() or ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and bool(_TRANSPORT_DETAILS.search(details))


def rpc_error_body(error: grpc.aio.AioRpcError) -> tuple[int, dict[str, dict[str, str]]]:
    """The HTTP status and error body for a failed mesh call."""
    status = rpc_http_status(error)
    details = error.details() or ""
    if error.code() not in STATUS_TO_HTTP:
        # The server's details for an unexpected code may carry internals; keep them in the log.
        log.error("mesh call failed: %s %s", error.code().name, details)
        return 500, error_body("INTERNAL", "internal error")
    if out_of_reach(error):
        # Not a service's own words but the transport's, with internal addresses in them: for
        # the log, not for a browser.
        log.warning("mesh call failed: %s", details)
        return status, error_body("UNAVAILABLE", MESH_UNREACHABLE)
    return status, error_body(error.code().name, details or error.code().name)


def rpc_error_response(error: grpc.aio.AioRpcError) -> JSONResponse:
    status, body = rpc_error_body(error)
    return JSONResponse(body, status_code=status)


async def _on_rpc_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, grpc.aio.AioRpcError)
    return rpc_error_response(exc)


async def _on_bad_request(_: Request, exc: Exception) -> JSONResponse:
    return error_response(400, "INVALID_ARGUMENT", str(exc))


async def _on_too_large(_: Request, exc: Exception) -> JSONResponse:
    return error_response(413, grpc.StatusCode.RESOURCE_EXHAUSTED.name, str(exc))


async def _on_body_timeout(_: Request, exc: Exception) -> JSONResponse:
    response = error_response(408, grpc.StatusCode.DEADLINE_EXCEEDED.name, str(exc))
    # The rest of the body may still come, and must not be read as the next request.
    response.headers["Connection"] = "close"
    return response


async def _on_precondition_failed(_: Request, exc: Exception) -> JSONResponse:
    return error_response(412, grpc.StatusCode.FAILED_PRECONDITION.name, str(exc))


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [_problem(err) for err in exc.errors()]
    return error_response(400, "INVALID_ARGUMENT", "; ".join(parts) or "invalid request")


async def _on_socket_validation(websocket: WebSocket, exc: Exception) -> None:
    # FastAPI's own handler closes before accepting, which a client sees as a bare HTTP 403
    # with no reason; like any other refusal on a socket, this one arrives as an error message
    # and a close with 4000 + the HTTP status.
    assert isinstance(exc, WebSocketRequestValidationError)
    message = "; ".join(_problem(err) for err in exc.errors()) or "invalid request"
    await websocket.accept()
    await websocket.send_json(error_body("INVALID_ARGUMENT", message))
    await websocket.close(code=4400)


def _problem(err: Any) -> str:
    """One validation error in the caller's terms: FastAPI's own wording for a body that is not
    JSON, or not an object, names neither the body nor what was wrong with it."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type")
    if kind == "json_invalid":
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"the body is not valid JSON: {err.get('ctx', {}).get('error', 'cannot parse')}{at}"
    if loc == ("body",):
        if kind == "missing":
            return "a JSON body is required"
        if isinstance(err.get("input"), bytes | str):
            return "the body must be JSON, sent with content-type: application/json"
        return "the body must be a JSON object"
    where = ".".join(str(p) for p in loc if p != "body")
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg"))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_TO_CODE.get(exc.status_code, "INTERNAL" if exc.status_code >= 500 else "UNKNOWN")
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := allowed_methods(request)):
        headers["Allow"] = ", ".join(allowed)
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. Starlette's 405 names only the
    first route that matched the path, and FastAPI makes one route per method (GET and POST
    /v1/jobs are two), while RFC 9110 wants all of them in Allow. Asked of each route through
    its public matches(), as FastAPI nests included routers in routes of its own; mounts take
    any method at their prefix and answer for themselves."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log, never to the client.
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "INTERNAL", "internal error")


def install(app: FastAPI) -> None:
    """Route every error through the one table above."""
    app.add_exception_handler(grpc.aio.AioRpcError, _on_rpc_error)
    app.add_exception_handler(BadRequest, _on_bad_request)
    app.add_exception_handler(TooLarge, _on_too_large)
    app.add_exception_handler(BodyTimeout, _on_body_timeout)
    app.add_exception_handler(PreconditionFailed, _on_precondition_failed)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(WebSocketRequestValidationError, _on_socket_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
