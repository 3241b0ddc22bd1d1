"""A job's stored events are replayed a page at a time: all of them, in order, once each."""

from __future__ import annotations

import asyncio

import pytest

from genmesh.v1 import job_pb2
from services.router import store as store_module
from services.router.store import Incoming, JobStore
from tests.router.helpers import World, created


def progress(percent: float) -> Incoming:
    event = job_pb2.JobEvent(job_id="j_fallback", state=job_pb2.JOB_STATE_PROCESSING)
    event.progress.percent = percent
    return Incoming("j_fallback", event)


async def sequences(store: JobStore, after: int) -> list[int]:
    return [e.sequence async for e in store.replay("j_fallback", after)]


async def test_replay_crosses_pages(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "REPLAY_PAGE", 10)
    await created(world.store)
    await world.store.apply([progress(i) for i in range(34)])  # sequences 2..35
    done = job_pb2.JobEvent(job_id="j_fallback", state=job_pb2.JOB_STATE_COMPLETED)
    await world.store.apply([Incoming("j_fallback", done)])  # 36

    assert await sequences(world.store, 0) == list(range(1, 37))
    assert await sequences(world.store, 13) == list(range(14, 37))
    # Exactly full pages, then an empty one.
    assert await sequences(world.store, 16) == list(range(17, 37))
    assert await sequences(world.store, 36) == []


async def test_a_paused_replay_does_not_hold_the_database(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "REPLAY_PAGE", 5)
    await created(world.store)
    await world.store.apply([progress(i) for i in range(12)])
    replay = world.store.replay("j_fallback", 0)
    first = await anext(replay)
    # A watcher stalled mid-page: recording carries on meanwhile.
    applied = await asyncio.wait_for(world.store.apply([progress(50)]), 10)
    assert [e.sequence for e in applied] == [14]
    rest = [e.sequence async for e in replay]
    assert [first.sequence, *rest] == list(range(1, 15))
