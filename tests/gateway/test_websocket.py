"""The WebSocket watch. No WebSocket client library is installed (websockets, httpx-ws), so
Starlette's in-process TestClient drives it, in a thread so the mesh's event loop keeps running."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning
from starlette.websockets import WebSocketDisconnect

with warnings.catch_warnings():
    # Starlette now prefers the httpx2 package for its TestClient; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from gateway.app import create_app
from tests.gateway.conftest import Bridge

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def _watch(bridge: Bridge, path: str) -> tuple[list[dict[str, Any]], int]:
    """Every JSON message on `path` and the close code."""
    messages: list[dict[str, Any]] = []
    with TestClient(create_app(bridge.settings)) as client, client.websocket_connect(path) as ws:
        while True:
            try:
                messages.append(ws.receive_json())
            except WebSocketDisconnect as closed:
                return messages, closed.code


async def test_websocket_sends_snapshot_then_events_and_closes(bridge: Bridge) -> None:
    job = (
        await bridge.http.post(
            "/v1/jobs",
            json={"task": "text-to-image", "prompt": "a fox", "parameters": {"latency_ms": 200}},
        )
    ).json()
    messages, code = await asyncio.to_thread(_watch, bridge, f"/v1/jobs/{job['id']}/ws")
    assert code == 1000
    assert messages[0]["id"] == job["id"]  # the snapshot
    sequences = [int(m["sequence"]) for m in messages[1:]]
    assert sequences == list(range(1, len(sequences) + 1))
    assert messages[-1]["state"] == "JOB_STATE_COMPLETED"

    later, _ = await asyncio.to_thread(
        _watch, bridge, f"/v1/jobs/{job['id']}/ws?after_sequence={sequences[-2]}"
    )
    assert [int(m["sequence"]) for m in later[1:]] == sequences[-1:]

    missing, code = await asyncio.to_thread(_watch, bridge, "/v1/jobs/no-such-job/ws")
    assert code == 4404
    assert missing == [{"error": {"code": "NOT_FOUND", "message": missing[0]["error"]["message"]}}]
