"""Runs a fake provider (any ASGI app) with uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


@asynccontextmanager
async def serving(app: Callable[..., Any]) -> AsyncIterator[str]:
    """Serve `app` in this event loop; yields its base URL ("http://127.0.0.1:PORT")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        ws="websockets-sansio",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
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
        if isinstance(failure.body, bytes | str):
            return Response(failure.body, failure.status, headers=dict(failure.headers))
        return JSONResponse(failure.body, failure.status, headers=dict(failure.headers))
