"""The bridge served by a real uvicorn on a free port, in front of a real in-process mesh."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from services.storage.app import running_storage
from services.storage.settings import Settings as StorageSettings
from tests.e2e.conftest import (  # noqa: F401  (fixtures, under the bridges)
    mesh,
    router_process_mesh,
)
from tests.fakes.server import serving
from tests.infra import free_port
from tests.mesh import Mesh

# The bridge as it runs: its lifespan, its own logging, uvicorn's default WebSocket stack.
BRIDGE_SERVER: dict[str, Any] = {
    "lifespan": "on",
    "log_config": None,
    "log_level": None,
    "ws": "auto",
}


@dataclass
class Bridge:
    mesh: Mesh
    settings: Settings
    http: httpx.AsyncClient


@asynccontextmanager
async def bridge_http(settings: Settings, port: int = 0) -> AsyncIterator[httpx.AsyncClient]:
    """A bridge with `settings` on `port` (else a free one), and an HTTP client for it."""
    async with (
        serving(create_app(settings), port, **BRIDGE_SERVER) as url,
        # trust_env=False: an inherited HTTP(S)_PROXY must not reroute loopback calls.
        httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http,
    ):
        yield http


@asynccontextmanager
async def storage_bridge(data_dir: Path, **storage: str) -> AsyncIterator[httpx.AsyncClient]:
    """A bridge in front of a real storage alone (SQLite and blobs under `data_dir`, with
    `storage` settings, GENMESH_*) and a router address where nothing listens."""
    storage_env = {
        "GENMESH_LISTEN": "127.0.0.1:0",
        "GENMESH_DATA_DIR": str(data_dir),
        "GENMESH_SHUTDOWN_GRACE": "1",
        **storage,
    }
    async with running_storage(StorageSettings.from_env(storage_env)) as running:
        settings = Settings(
            router_addr=f"127.0.0.1:{free_port()}", storage_addr=running.address, shutdown_grace=1
        )
        async with bridge_http(settings) as http:
            yield http


@asynccontextmanager
async def serving_grpc(
    servicer: object, *adds: Callable[[Any, grpc.aio.Server], None]
) -> AsyncIterator[str]:
    """`servicer` as a gRPC server on a free loopback port (registered by each
    add_XServicer_to_server in `adds`); its address. Stopped without grace, for fakes that
    never answer."""
    server = grpc.aio.server()
    for add in adds:
        add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@asynccontextmanager
async def mesh_bridge(
    mesh: Mesh,  # noqa: F811
    port: int = 0,
    **overrides: str,
) -> AsyncIterator[Bridge]:
    """A bridge in front of `mesh` on `port` (else a free one), with the mesh's settings and
    `overrides` (GENMESH_*)."""
    settings = Settings.from_env({**mesh.env, **overrides})
    async with bridge_http(settings, port) as http:
        yield Bridge(mesh, settings, http)


@pytest.fixture
async def bridge(mesh: Mesh) -> AsyncIterator[Bridge]:  # noqa: F811  (the fixture above)
    async with mesh_bridge(mesh) as bridge:
        yield bridge


async def submit(
    http: httpx.AsyncClient, headers: Mapping[str, str] | None = None, **spec: object
) -> dict[str, object]:
    """POST /v1/jobs (a text-to-image job unless `spec` says otherwise); the created job."""
    body = {"task": "text-to-image", "prompt": "a red fox in snow", **spec}
    response = await http.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    job: dict[str, object] = response.json()
    return job


@dataclass
class Answer:
    """An HTTP answer read off a raw socket: its status, headers (lower-case) and JSON body."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]


async def post_partly(
    http: httpx.AsyncClient,
    path: str,
    headers: Mapping[str, str],
    sent: bytes,
    patience: float,
) -> Answer:
    """POST `path` on a raw connection, send `sent` of its body and no more (the client stalls,
    never closing), and read the answer within `patience` seconds; when it says
    `Connection: close`, the connection must then close within them too."""
    url = http.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: {url.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write("\r\n".join([*lines, "", ""]).encode() + sent)
        await writer.drain()
        async with asyncio.timeout(patience):
            answer = await read_answer(reader)
            if answer.headers.get("connection") == "close":
                assert await reader.read() == b"", "more after an answer that closes"
            return answer
    finally:
        writer.close()
        await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return Answer(int(status_line.split()[1]), headers, json.loads(body))


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
