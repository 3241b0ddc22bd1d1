"""Runs a fake provider (any ASGI app) with uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class _QuietServer(uvicorn.Server):
    """Leaves signal handling to pytest."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serving(app: Callable[..., Any], port: int = 0, **config: Any) -> AsyncIterator[str]:
    """Serve `app` in this event loop; yields its base URL ("http://127.0.0.1:PORT").

    `port` (else a free one) lets a server come back where an earlier one was (hold it with
    tests.infra.reserved_port meanwhile); `config` passes
    uvicorn.Config settings over a fake's defaults (no lifespan, quiet logs)."""
    # IPPROTO_TCP by number: only then does asyncio set TCP_NODELAY on the connections it
    # accepts; without, a response's body waited for the client's delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # The earlier server's closed connections linger in TIME_WAIT on that port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if port:
        # The port may be one the test holds (tests.infra.reserved_port) so that no other
        # process takes it between servers: sharing it takes SO_REUSEPORT on both sockets.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "off",
        "ws": "websockets-sansio",
        "timeout_graceful_shutdown": 1,
        **config,
    }
    server = _QuietServer(uvicorn.Config(app, **settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # its error, if it raised one
                raise RuntimeError("uvicorn did not start")  # e.g. the app's lifespan failed
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Injected:
    """One scripted failure: the status, body and headers the fake answers with instead."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Seconds to wait before answering (a slow provider).
    delay: float = 0.0

    def response(self) -> Response:
        """The answer itself: bytes or text as they are, anything else as JSON."""
        if isinstance(self.body, bytes | str):
            return Response(self.body, self.status, headers=dict(self.headers))
        return JSONResponse(self.body, self.status, headers=dict(self.headers))


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Faults:
    """Failures a test queues up; a fake consults it at the start of every request it serves."""

    def __init__(self) -> None:
        self._queue: deque[Injected] = deque()
        self.requests: list[Recorded] = []

    def inject(self, *failures: Injected) -> None:
        self._queue.extend(failures)

    async def check(self, request: Request) -> Response | None:
        """Record the request; return the next scripted failure, if any."""
        body = await request.body()
        self.requests.append(
            Recorded(request.method, request.url.path, dict(request.headers), body)
        )
        if not self._queue:
            return None
        failure = self._queue.popleft()
        if failure.delay:
            await asyncio.sleep(failure.delay)
        return failure.response()
