"""Query parameters an API route does not take are refused, not ignored."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

# The page, the docs and the schema take whatever a browser or a link adds to their address.
API_PREFIX = "/v1/"


async def known_query(connection: HTTPConnection) -> None:
    """A 400 (on a socket, an error message and close 4400) naming the parameters an API
    route takes, for any other in its query: a misspelt filter must not list every job."""
    route = connection.scope.get("route")
    dependant: Dependant | None = getattr(route, "dependant", None)
    if dependant is None or not connection.url.path.startswith(API_PREFIX):
        return
    # Read afresh each time: a few fields, and routes are no keys (some are unhashable).
    taken = frozenset(_names(dependant))
    unknown = [name for name in dict.fromkeys(connection.query_params) if name not in taken]
    if not unknown:
        return
    known = ", ".join(sorted(taken)) or "none"
    errors = [
        {
            "type": "extra_forbidden",
            "loc": ("query", name),
            "msg": f"this route takes no such parameter (it takes: {known})",
            "input": connection.query_params[name],
        }
        for name in unknown
    ]
    if isinstance(connection, WebSocket):
        raise WebSocketRequestValidationError(errors)
    raise RequestValidationError(errors)


def _names(dependant: Dependant) -> Iterator[str]:
    """The query parameters of a route and of everything it depends on."""
    yield from (field.alias for field in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _names(sub)
