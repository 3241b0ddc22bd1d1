"""JobService.WatchJobs, the all-jobs feed the bridge's live page rides on, over real gRPC."""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import grpc
import pytest

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2
from services.common.errors import InvalidArgument
from services.common.parameters import dict_to_struct
from services.common.tenancy import tenant_metadata
from services.router.feed import Position
from services.router.transitions import TERMINAL
from tests.mesh import Mesh

Call: TypeAlias = grpc.aio.UnaryStreamCall[
    job_service_pb2.WatchJobsRequest, job_service_pb2.WatchJobsResponse
]


@asynccontextmanager
async def feed(mesh: Mesh, cursor: str = "", tenant: str = "default") -> AsyncIterator[Call]:
    call = mesh.jobs.WatchJobs(
        job_service_pb2.WatchJobsRequest(cursor=cursor), metadata=tenant_metadata(tenant)
    )
    try:
        yield call
    finally:
        call.cancel()


async def submit(mesh: Mesh, latency_ms: int = 100, tenant: str = "default") -> str:
    spec = job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="a fox")
    spec.parameters.CopyFrom(dict_to_struct({"latency_ms": latency_ms, "width": 32, "height": 32}))
    reply = await mesh.generate.Submit(
        generate_service_pb2.SubmitRequest(spec=spec), metadata=tenant_metadata(tenant)
    )
    return reply.job.id


async def read_until_done(
    call: Call, jobs: set[str], within: float = 30
) -> list[job_service_pb2.WatchJobsResponse]:
    """Messages until every job in `jobs` has sent its terminal event."""
    messages = []
    pending = set(jobs)

    async def read() -> None:
        while pending:
            reply = await call.read()
            assert reply is not grpc.aio.EOF, "the feed ended"
            messages.append(reply)
            if reply.HasField("event") and reply.event.state in TERMINAL:
                pending.discard(reply.event.job_id)

    await asyncio.wait_for(read(), within)
    return messages


def by_job(messages: list[job_service_pb2.WatchJobsResponse]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in messages:
        if m.HasField("event"):
            out.setdefault(m.event.job_id, []).append(m.event.sequence)
    return out


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
async def test_feed_sends_every_event_once_and_resumes_from_any_cursor(mesh: Mesh) -> None:
    async with feed(mesh) as call:
        first = await call.read()
        assert first.WhichOneof("update") == "cursor" and first.cursor
        jobs = {await submit(mesh), await submit(mesh, latency_ms=300)}
        messages = await read_until_done(call, jobs)

    # Jobs created after the cursor arrive whole, in order, each event once.
    seen = by_job(messages)
    assert set(seen) == jobs
    for sequences in seen.values():
        assert sequences == list(range(1, len(sequences) + 1)), sequences
    assert any(m.WhichOneof("update") == "cursor" for m in messages)

    # Resuming from each cursor sends exactly the events that followed it, nothing earlier.
    cursors = [(i, m.cursor) for i, m in enumerate(messages) if m.WhichOneof("update") == "cursor"]
    for index, cursor in [(-1, first.cursor), *cursors[:-1]]:
        expected = by_job(messages[index + 1 :])
        async with feed(mesh, cursor) as again:
            assert (await again.read()).cursor == cursor
            replay = await read_until_done(again, set(expected))
        assert by_job(replay) == expected


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_feed_starts_now_and_keeps_tenants_apart(mesh: Mesh) -> None:
    running = await submit(mesh, latency_ms=1500)
    async for reply in mesh.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=running)):
        if reply.HasField("event") and reply.event.state == job_pb2.JOB_STATE_PROCESSING:
            break
    async with feed(mesh) as mine, feed(mesh, tenant="acme") as theirs:
        await mine.read()
        await theirs.read()
        other = await submit(mesh, tenant="acme")
        seen = by_job(await read_until_done(mine, {running}))
        sequences = seen.pop(running)
        # Only what happened after the feed opened: not the job's QUEUED event.
        assert sequences[0] > 1 and sequences == list(range(sequences[0], sequences[-1] + 1))
        assert seen == {}
        assert set(by_job(await read_until_done(theirs, {other}))) == {other}


def packed(raw: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode()


# Each was INTERNAL: an overflowing mark, JSON nested past the parser's depth, and (on
# PostgreSQL, which refuses NUL in text) an id with a NUL in it.
CRAFTED = [
    packed(b"[1," + b"9" * 400 + b",{}]"),
    packed(b"[" * 100_000),
    packed(rb'[1,0,{"j_\u0000":1}]'),
]


def test_a_cursor_that_would_inflate_past_its_limit_is_refused_unread() -> None:
    # 64 MiB of spaces packs into about 64 KiB: inflated whole, a few MiB of cursor would
    # cost the router gigabytes.
    bomb = packed(b"[1,0,{}" + b" " * (64 << 20) + b"]")
    assert len(bomb) < 100_000
    with pytest.raises(InvalidArgument, match="malformed cursor"):
        Position.decode(bomb)
    for cursor in CRAFTED:
        with pytest.raises(InvalidArgument, match="malformed cursor"):
            Position.decode(cursor)
    position = Position(12.5, {"j_1": 3})
    assert Position.decode(position.encode()) == position


async def test_malformed_cursor_is_invalid_argument(mesh: Mesh) -> None:
    wrong_version = base64.urlsafe_b64encode(zlib.compress(b"[99,0,{}]")).decode()
    for cursor in ["not-a-cursor", wrong_version, *CRAFTED]:
        async with feed(mesh, cursor) as call:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
