"""The bridge served by a real uvicorn on a free port, in front of a real in-process mesh."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import Database
from tests.infra import eventually, free_port
from tests.mesh import Mesh, running_mesh


class _QuietServer(uvicorn.Server):
    """Leaves signal handling to pytest."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` (lifespan included) on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), within=10)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Bridge:
    mesh: Mesh
    settings: Settings
    http: httpx.AsyncClient


@pytest.fixture
async def bridge(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> AsyncIterator[Bridge]:
    async with running_mesh(
        nats_url=nats_url, prefix=nats_prefix, database=database, data_dir=tmp_path
    ) as mesh:
        settings = Settings.from_env(mesh.env)
        async with (
            serving(create_app(settings)) as url,
            # trust_env=False: an inherited HTTP(S)_PROXY must not reroute loopback calls.
            httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http,
        ):
            yield Bridge(mesh, settings, http)


@dataclass
class SseEvent:
    event: str
    id: str | None
    data: Any


async def iter_sse(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """The events of a text/event-stream response as they arrive."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in fields:
                data = json.loads(fields["data"])
                yield SseEvent(fields.get("event", "message"), fields.get("id"), data)
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


async def read_sse(response: httpx.Response) -> list[SseEvent]:
    """Every event of a text/event-stream response until the server closes it."""
    return [event async for event in iter_sse(response)]
