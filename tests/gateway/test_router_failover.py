"""Live streams through the bridge survive the router serving them: routers as real
subprocesses on one PostgreSQL database, one SIGKILLed (or restarted) mid-job, and every
client (SSE and WebSocket watches of the job, the Generate stream that made it, the feed)
still sees each of the job's events once, in order, to COMPLETED. With
GENMESH_STREAM_RESUME_WINDOW at 0, or once it runs out, they are told as before."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.errors import MESH_UNREACHABLE
from tests.gateway.conftest import Bridge, iter_sse, mesh_bridge
from tests.infra import eventually, reserved_port
from tests.mesh import Mesh, start_process, stop_process, wait_serving

# Routers that share the work share a database: PostgreSQL, as the mesh is scaled out.
pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)

STEPS = 12
# A second a step: long enough for a router to be started, and another killed, mid-job.
SPEC = {
    "task": "text-to-image",
    "prompt": "a red fox in snow",
    "provider": "sandbox",
    "parameters": {"latency_ms": 12_000, "steps": STEPS, "preview": False, "width": 32},
}
TERMINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
# Seconds for a stream to reach its end after the router went: the job's run, plus the
# recorder's ack wait for events the dead router held.
PATIENCE = 60.0
LOST = {"error": {"code": "UNAVAILABLE", "message": MESH_UNREACHABLE}}

Message = dict[str, Any]


@dataclass
class Stream:
    """One client's stream of the job, read in the background: its messages as WebSocket
    messages ({"job": …}, {"event": …}, {"cursor": …}, {"error": …}), and how it closed."""

    name: str
    job_id: str = ""
    messages: list[Message] = field(default_factory=list)
    close_code: int | None = None
    task: asyncio.Task[None] | None = None

    def events(self) -> list[Message]:
        events = (m["event"] for m in self.messages if "event" in m)
        return [e for e in events if e["job_id"] == self.job_id]

    def ended(self) -> bool:
        return any(e["state"] in TERMINAL for e in self.events())


def _as_message(event: str, data: Any) -> Message:
    if event == "job":
        return {"job": data}
    if event in ("cursor", "error"):
        return dict(data)
    return {"event": data}


async def _read_sse(stream: Stream, bridge: Bridge, method: str, path: str) -> None:
    body = SPEC if method == "POST" else None
    async with bridge.http.stream(method, path, json=body, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        async for event in iter_sse(response):
            stream.messages.append(_as_message(event.event, event.data))
            if stream.name == "feed" and stream.ended():
                return  # the feed goes on after the job; nothing more to see here


async def _read_socket(stream: Stream, bridge: Bridge, path: str) -> None:
    url = str(bridge.http.base_url).replace("http://", "ws://") + path
    async with connect(url, proxy=None, open_timeout=10) as ws:
        while True:
            try:
                stream.messages.append(json.loads(await ws.recv()))
            except ConnectionClosed as closed:
                stream.close_code = closed.rcvd.code if closed.rcvd else 1006
                return


@asynccontextmanager
async def _streams(bridge: Bridge) -> AsyncIterator[list[Stream]]:
    """The feed, a Generate stream (whose job is the one watched) and that job's watches
    over SSE and WebSocket, open."""
    feed, made, sse, socket = Stream("feed"), Stream("generate"), Stream("sse"), Stream("ws")
    streams = [feed, made, sse, socket]
    try:
        # The feed first, so it has the job's every event.
        feed.task = asyncio.create_task(_read_sse(feed, bridge, "GET", "/v1/jobs:watch"))
        await eventually(lambda: feed.messages, within=10)
        made.task = asyncio.create_task(_read_sse(made, bridge, "POST", "/v1/jobs:generate"))
        await eventually(lambda: made.messages, within=10)
        job_id = made.messages[0]["job"]["id"]
        for stream in streams:
            stream.job_id = job_id
        sse.task = asyncio.create_task(_read_sse(sse, bridge, "GET", f"/v1/jobs/{job_id}/events"))
        socket.task = asyncio.create_task(_read_socket(socket, bridge, f"/v1/jobs/{job_id}/ws"))
        yield streams
    finally:
        tasks = [s.task for s in streams if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _mid_job(streams: list[Stream]) -> None:
    """Wait until every stream has seen the job's first step, and check none has its end."""

    def stepped(stream: Stream) -> bool:
        return any(e["progress"]["message"] == f"step 1/{STEPS}" for e in stream.events())

    await eventually(lambda: all(stepped(s) for s in streams), within=30)
    assert not any(s.ended() for s in streams), "the job ended before the router went"


async def _finish(streams: list[Stream]) -> None:
    tasks = [s.task for s in streams if s.task is not None]
    await asyncio.wait_for(asyncio.gather(*tasks), PATIENCE)


async def assert_whole(bridge: Bridge, streams: list[Stream]) -> None:
    """Each stream has the job's every event once, in order, to COMPLETED (the job's last
    event, as the router has it), and no error."""
    for stream in streams:
        assert not [m for m in stream.messages if "error" in m], (stream.name, stream.messages)
        events = stream.events()
        sequences = [int(e["sequence"]) for e in events]
        assert sequences == list(range(1, len(sequences) + 1)), (stream.name, sequences)
        assert events[-1]["state"] == "JOB_STATE_COMPLETED", stream.name
        if stream.name != "feed":
            # One snapshot of the job, first: no second one from the call opened again.
            assert [i for i, m in enumerate(stream.messages) if "job" in m] == [0], stream.name
    socket = next(s for s in streams if s.name == "ws")
    assert socket.close_code == 1000
    job = (await bridge.http.get(f"/v1/jobs/{streams[0].job_id}")).json()
    assert job["state"] == "JOB_STATE_COMPLETED", job
    assert {len(s.events()) for s in streams} == {int(job["last_sequence"])}


async def test_streams_move_to_another_replica_when_theirs_is_killed(
    router_process_mesh: Mesh,
) -> None:
    mesh = router_process_mesh
    async with AsyncExitStack() as stack:
        second = f"127.0.0.1:{stack.enter_context(reserved_port(any_server=True))}"
        first = mesh.env["GENMESH_ROUTER_ADDR"]
        # The bridge knows both replicas; the second starts only once every stream is open,
        # so the first serves them all, and it is the one killed.
        bridge = await stack.enter_async_context(
            mesh_bridge(mesh, GENMESH_ROUTER_ADDR=f"{first},{second}")
        )
        streams = await stack.enter_async_context(_streams(bridge))
        await _mid_job(streams)
        replica = start_process("services.router", {**mesh.env, "GENMESH_LISTEN": second})

        async def stop_replica() -> None:
            await stop_process(replica)

        stack.push_async_callback(stop_replica)
        await wait_serving(second)
        assert not any(s.ended() for s in streams), "the job ended before the router went"
        assert mesh.router_proc is not None
        await stop_process(mesh.router_proc, signal.SIGKILL)

        await _finish(streams)
        await assert_whole(bridge, streams)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_streams_wait_for_a_restarted_router(router_process_mesh: Mesh, sig: int) -> None:
    mesh = router_process_mesh
    async with (
        mesh_bridge(mesh) as bridge,
        _streams(bridge) as streams,
    ):
        await _mid_job(streams)
        # On the same port (held by the mesh throughout), as soon as it is gone.
        await mesh.restart_router(sig)
        await _finish(streams)
        await assert_whole(bridge, streams)


@pytest.mark.parametrize(
    ("window", "comes_back"),
    [("0", True), ("1", False)],
    ids=["no-window", "window-runs-out"],
)
async def test_without_a_window_or_past_it_clients_are_told(
    router_process_mesh: Mesh, window: str, comes_back: bool
) -> None:
    mesh = router_process_mesh
    async with (
        mesh_bridge(mesh, GENMESH_STREAM_RESUME_WINDOW=window) as bridge,
        _streams(bridge) as streams,
    ):
        await _mid_job(streams)
        if comes_back:
            await mesh.restart_router(signal.SIGKILL)
        else:
            assert mesh.router_proc is not None
            await stop_process(mesh.router_proc, signal.SIGKILL)
        await _until(streams, lambda s: bool(s.messages) and "error" in s.messages[-1])
        for stream in streams:
            # As before: the in-band error, which tells the client to reconnect.
            assert stream.messages[-1] == LOST, stream.name
            assert not stream.ended(), stream.name
        socket = next(s for s in streams if s.name == "ws")
        await _until([socket], lambda s: s.close_code is not None)
        assert socket.close_code == 4503


async def _until(streams: list[Stream], done: Callable[[Stream], bool]) -> None:
    await eventually(lambda: all(done(s) for s in streams), within=PATIENCE)
