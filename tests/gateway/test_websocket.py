"""The WebSockets over real HTTP (uvicorn on loopback, a real mesh): one job's watch, the
all-jobs feed, resuming both, and a stalled client that holds up nobody else."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.router.feed import Position
from tests.gateway.conftest import Bridge
from tests.gateway.conftest import submit as submit_job

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

TERMINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


@asynccontextmanager
async def socket(bridge: Bridge, path: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    url = str(bridge.http.base_url).replace("http://", "ws://") + path
    # proxy=None: an inherited proxy setting must not reroute loopback.
    async with connect(url, proxy=None, open_timeout=10, **kwargs) as ws:
        yield ws


async def receive_all(ws: ClientConnection, within: float = 30) -> tuple[list[Any], int]:
    """Every message until the server closes, and the close code."""
    messages: list[Any] = []

    async def read() -> int:
        while True:
            try:
                messages.append(json.loads(await ws.recv()))
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else 1006

    return messages, await asyncio.wait_for(read(), within)


async def submit(bridge: Bridge, latency_ms: int = 200, **headers: str) -> str:
    parameters = {"latency_ms": latency_ms, "width": 32, "height": 32}
    job = await submit_job(bridge.http, headers, prompt="a fox", parameters=parameters)
    return str(job["id"])


async def test_job_socket_sends_snapshot_then_events_resumes_and_closes(bridge: Bridge) -> None:
    job_id = await submit(bridge)
    async with socket(bridge, f"/v1/jobs/{job_id}/ws") as ws:
        messages, code = await receive_all(ws)
    assert code == 1000
    assert messages[0]["job"]["id"] == job_id  # the snapshot
    events = [m["event"] for m in messages[1:]]
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert events[-1]["state"] == "JOB_STATE_COMPLETED"

    # Reconnecting after the second-to-last sequence sends only the last event.
    async with socket(bridge, f"/v1/jobs/{job_id}/ws?after_sequence={sequences[-2]}") as ws:
        later, code = await receive_all(ws)
    assert code == 1000
    assert [int(m["event"]["sequence"]) for m in later[1:]] == sequences[-1:]

    async with socket(bridge, "/v1/jobs/no-such-job/ws") as ws:
        missing, code = await receive_all(ws)
    assert code == 4404
    assert missing == [{"error": {"code": "NOT_FOUND", "message": missing[0]["error"]["message"]}}]


async def read_feed(ws: ClientConnection, until_done: set[str], within: float = 30) -> list[Any]:
    """Feed messages until every job in `until_done` has sent its terminal event."""
    messages: list[Any] = []
    pending = set(until_done)

    async def read() -> None:
        while pending:
            message = json.loads(await ws.recv())
            messages.append(message)
            event = message.get("event")
            if event and event["state"] in TERMINAL:
                pending.discard(event["job_id"])

    await asyncio.wait_for(read(), within)
    return messages


def sequences(messages: list[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in messages:
        if "event" in m:
            out.setdefault(m["event"]["job_id"], []).append(int(m["event"]["sequence"]))
    return out


async def test_feed_socket_resumes_from_a_cursor_missing_nothing(bridge: Bridge) -> None:
    async with socket(bridge, "/v1/jobs:watch") as ws:
        first = json.loads(await ws.recv())
        assert set(first) == {"cursor"}
        quick = await submit(bridge, latency_ms=0)
        slow = await submit(bridge, latency_ms=1500)
        before = await read_feed(ws, {quick})
    # Disconnected: the slow job goes on. Resume from the last cursor received.
    cursor = next(m["cursor"] for m in reversed(before) if "cursor" in m)
    cut = max(i for i, m in enumerate(before) if m.get("cursor") == cursor)
    async with socket(bridge, f"/v1/jobs:watch?cursor={cursor}") as ws:
        after = await read_feed(ws, {slow})
    assert after[0] == {"cursor": cursor}

    seen = sequences(before[: cut + 1])
    resumed = sequences(after)
    for job_id in (quick, slow):
        whole = seen.get(job_id, []) + resumed.get(job_id, [])
        assert whole == list(range(1, len(whole) + 1)), (job_id, whole)
    assert seen[quick] and resumed[slow][-1] >= 3

    # Another tenant's feed stays quiet about these jobs.
    acme = {"x-genmesh-tenant": "acme"}
    async with socket(bridge, "/v1/jobs:watch", additional_headers=acme) as ws:
        await ws.recv()
        theirs = await submit(bridge, latency_ms=0, **acme)
        assert set(sequences(await read_feed(ws, {theirs}))) == {theirs}


async def test_feed_socket_resumes_from_a_cursor_following_a_thousand_jobs(
    bridge: Bridge,
) -> None:
    # A feed's cursor names every job it follows, so one taken during a large batch is tens
    # of KiB: far past the 8 KiB request line a WebSocket handshake allowed by default.
    # (Jobs of no tenant here: the feed forgets them and goes on.)
    followed = {f"j_{uuid.uuid4().hex}": 6 for _ in range(1000)}
    cursor = Position(time.time(), followed).encode()
    assert len(cursor) > 16 * 1024
    async with socket(bridge, f"/v1/jobs:watch?cursor={cursor}") as ws:
        first = json.loads(await ws.recv())
        assert set(first) == {"cursor"}
        job_id = await submit(bridge, latency_ms=0)
        assert sequences(await read_feed(ws, {job_id}))[job_id][-1] >= 3


async def test_feed_socket_rejects_a_bad_cursor(bridge: Bridge) -> None:
    async with socket(bridge, "/v1/jobs:watch?cursor=nonsense") as ws:
        messages, code = await receive_all(ws)
    assert code == 4400
    assert messages[0]["error"]["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("path", "headers", "needle"),
    [
        ("/v1/jobs/{job}/ws?after_sequence=-1", {}, "after_sequence"),
        ("/v1/jobs/{job}/ws?after_sequence=soon", {}, "after_sequence"),
        ("/v1/jobs:watch", {"x-genmesh-tenant": "-bad"}, "x-genmesh-tenant"),
    ],
)
async def test_a_socket_with_bad_parameters_is_told_why(
    bridge: Bridge, path: str, headers: dict[str, str], needle: str
) -> None:
    # These were refused at the handshake with a bare 403: no message, no 4000 + status code.
    job_id = await submit(bridge, latency_ms=0)
    async with socket(bridge, path.format(job=job_id), additional_headers=headers) as ws:
        messages, code = await receive_all(ws)
    assert code == 4400
    assert messages[0]["error"]["code"] == "INVALID_ARGUMENT"
    assert needle in messages[0]["error"]["message"]


async def test_a_stalled_client_holds_up_no_other_watcher(bridge: Bridge) -> None:
    job_id = await submit(bridge, latency_ms=1000)
    # max_queue=1: the stalled client's library stops reading the socket after one frame.
    stalled_socket = socket(bridge, f"/v1/jobs/{job_id}/ws", max_queue=1, close_timeout=0.5)
    async with stalled_socket as stalled:
        async with socket(bridge, f"/v1/jobs/{job_id}/ws") as ws:
            messages, code = await receive_all(ws, within=15)
        assert code == 1000 and messages[-1]["event"]["state"] == "JOB_STATE_COMPLETED"
        assert stalled.close_code is None
