"""Stopping `python -m gateway` (as `genmesh up` does, with SIGTERM) while live streams are open:
every SSE response ends as a complete response and every WebSocket is closed 1001 (going
away), so clients resume as after any reconnect, and the bridge logs no error or traceback
(it used to wait out its graceful timeout, then cancel the streams mid-response)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.gateway.conftest import SseEvent, iter_sse, submit
from tests.gateway.test_websocket import receive_all
from tests.infra import eventually
from tests.mesh import Mesh, start_process, stop_process

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

# Jobs that outlast the test, so no stream ends on its own.
LONG = {"latency_ms": 60_000, "width": 32, "height": 32}
SPEC = {"task": "text-to-image", "prompt": "a fox", "parameters": LONG}


async def test_stopping_the_bridge_ends_every_live_stream_cleanly(
    mesh: Mesh, tmp_path: Path, held_port: int
) -> None:
    listen = f"127.0.0.1:{held_port}"
    log_path = tmp_path / "gateway.log"
    env = {**mesh.env, "GENMESH_LISTEN": listen, "GENMESH_LOG_LEVEL": "INFO"}
    with log_path.open("wb") as log:
        proc = start_process("gateway", env, stderr=log)
    try:
        # trust_env=False: an inherited HTTP(S)_PROXY must not reroute loopback calls.
        http = httpx.AsyncClient(base_url=f"http://{listen}", trust_env=False, timeout=30)
        async with http, AsyncExitStack() as stack:

            async def healthy() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, within=20)
            job_id = (await submit(http, prompt="a fox", parameters=LONG))["id"]
            batch = await http.post("/v1/batches", json={"specs": [SPEC]})
            assert batch.status_code == 201, batch.text
            batch_id = batch.json()["batch_id"]

            requests = {
                "/v1/jobs:watch": http.stream("GET", "/v1/jobs:watch"),
                f"/v1/jobs/{job_id}/events": http.stream("GET", f"/v1/jobs/{job_id}/events"),
                f"/v1/batches/{batch_id}/events": http.stream(
                    "GET", f"/v1/batches/{batch_id}/events"
                ),
                "/v1/jobs:generate": http.stream("POST", "/v1/jobs:generate", json=SPEC),
            }
            streams: dict[str, AsyncIterator[SseEvent]] = {}
            for path, request in requests.items():
                response = await stack.enter_async_context(request)
                assert response.status_code == 200, path
                streams[path] = iter_sse(response)
                await anext(streams[path])  # the stream is live

            ws_base = f"ws://{listen}"
            sockets: dict[str, ClientConnection] = {}
            for path in ("/v1/jobs:watch", f"/v1/jobs/{job_id}/ws", f"/v1/batches/{batch_id}/ws"):
                # proxy=None: an inherited proxy setting must not reroute loopback.
                sockets[path] = await stack.enter_async_context(
                    connect(ws_base + path, proxy=None, open_timeout=10)
                )
                json.loads(await sockets[path].recv())  # the stream is live

            async def sse_end(events: AsyncIterator[SseEvent]) -> str:
                try:
                    async for _ in events:
                        pass
                except httpx.HTTPError as e:
                    return f"{type(e).__name__}: {e}"
                return "ended"

            async def ws_end(ws: ClientConnection) -> int:
                return (await receive_all(ws))[1]

            stopping = asyncio.create_task(stop_process(proc))
            ends = await asyncio.gather(
                *(sse_end(events) for events in streams.values()),
                *(ws_end(ws) for ws in sockets.values()),
            )
            code = await stopping
    finally:
        await stop_process(proc)

    outcome = dict(zip([*streams, *(f"ws {path}" for path in sockets)], ends, strict=True))
    expected = {**dict.fromkeys(streams, "ended"), **dict.fromkeys(outcome.keys() - streams, 1001)}
    text = log_path.read_text()
    assert outcome == expected, text
    assert code == 0, text
    assert "Traceback" not in text and " ERROR " not in text, text
