"""A watcher's inbox: waiting stays cancellable, and a silent watcher whose job moved on
in the store is sent to read it."""

from __future__ import annotations

import asyncio

import nats

from genmesh.v1 import job_pb2
from services.router.store import Incoming
from services.router.watch import Listener, WatchHub
from tests.router.helpers import World, created


async def test_a_cancel_that_meets_an_arriving_event_still_cancels_the_wait() -> None:
    # The event and the cancellation land in one loop pass: CPython 3.11's wait_for
    # returned the event here and the watcher carried on as if never cancelled.
    listener = Listener()
    waiting = asyncio.create_task(listener.next(60))
    await asyncio.sleep(0.01)
    listener.offer(job_pb2.JobEvent(sequence=1))
    waiting.cancel()
    await asyncio.wait([waiting], timeout=10)
    assert waiting.cancelled()
    # Nothing is lost: the event is still there for the next wait.
    assert listener.queue.qsize() == 1


async def test_a_nudge_wakes_a_watcher_waiting_without_a_timeout() -> None:
    listener = Listener()
    waiting = asyncio.create_task(listener.next())
    await asyncio.sleep(0.01)
    listener.nudge()
    async with asyncio.timeout(10):
        assert await waiting is None
    # The wake-up is never handed out as an event.
    listener.offer(job_pb2.JobEvent(sequence=2))
    assert (await listener.next()) == job_pb2.JobEvent(sequence=2)


async def test_recheck_nudges_only_silent_watchers_whose_job_moved_on(
    world: World, nats_url: str
) -> None:
    await created(world.store)
    nc = await nats.connect(nats_url)
    hub = WatchHub(nc, world.bus)
    try:
        with hub.listen("j_fallback") as behind, hub.listen("j_fallback") as current:
            # Another replica recorded sequence 2 and died before announcing it.
            moved = job_pb2.JobEvent(job_id="j_fallback", state=job_pb2.JOB_STATE_PROCESSING)
            await world.store.apply([Incoming("j_fallback", moved)])
            behind.seen, current.seen = 1, 2

            # Word came recently: no lookup yet.
            await hub.recheck(world.store.last_sequences, quiet=60)
            assert behind.queue.empty() and not behind.lagged

            await hub.recheck(world.store.last_sequences, quiet=0)
            async with asyncio.timeout(10):
                assert await behind.next() is None  # off to the store
            assert current.queue.empty() and not current.lagged
    finally:
        await nc.close()


async def test_last_sequences_reads_many_jobs_at_once(world: World) -> None:
    await created(world.store)
    assert await world.store.last_sequences(["j_fallback", "j_missing"]) == {"j_fallback": 1}
