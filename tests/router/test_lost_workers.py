"""The router sends a lost worker's jobs on at once, and only a lost one's."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig

from genmesh.v1 import bus_pb2, job_pb2
from services.common.bus import Bus, connect
from services.common.db import open_database
from services.common.pulling import PullConsumer
from services.router.lost_workers import LostWorkers
from services.router.recorder import incoming
from services.router.store import JobStore, metadata
from services.router.watch import WatchHub
from tests.conftest import Database
from tests.infra import eventually, private_nats, unique
from tests.router.helpers import World, created

# The router's side does not depend on its database.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

WORKER = "w1"
# The dead workers' ack wait: JetStream would send their jobs on after it.
ACK_WAIT = 30.0
# How long each test gives a worker to be taken for lost, were it going to be.
LOST_AFTER = 0.3


@dataclass
class Setup:
    nc: Client
    hub: WatchHub
    lost: LostWorkers
    # The verbs that reached the job message's reply subject.
    acks: list[bytes]
    delivery: str
    # Events-stream sequences for the worker messages recorded.
    seqs: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # The last index of each run recorded.
    indexes: dict[str, int] = field(default_factory=dict)


@pytest.fixture
async def setup(world: World, nats_url: str) -> AsyncIterator[Setup]:
    nc = await nats.connect(nats_url)
    hub = WatchHub(nc, world.bus)
    await hub.start()
    acks: list[bytes] = []
    delivery = f"{world.bus.prefix}.test.ack.{WORKER}"

    async def on_ack(msg: Msg) -> None:
        acks.append(msg.data.split()[0])

    sub = await nc.subscribe(delivery, cb=on_ack)
    # Workers named "left-…" stopped cleanly, as their registration would say.
    lost = LostWorkers(
        nc, world.bus, world.store, hub, LOST_AFTER, lambda w: w.startswith("left-"), every=0.05
    )
    task = asyncio.create_task(lost.run())
    try:
        yield Setup(nc, hub, lost, acks, delivery)
    finally:
        task.cancel()
        await sub.unsubscribe()
        await hub.stop()
        await nc.close()


async def heard(
    setup: Setup,
    world: World,
    job_id: str,
    state: int = job_pb2.JOB_STATE_PROCESSING,
    worker: str = WORKER,
    run: str = "r1",
    handed_back: bool = False,
    lost: LostWorkers | None = None,
    age: float = 0.0,
) -> None:
    """The recorder (of the router replica `lost`) fetched and applied the next message of
    `worker`'s run of the job."""
    event = job_pb2.JobEvent(job_id=job_id, state=state)  # type: ignore[arg-type]
    index = setup.indexes[run] = setup.indexes.get(run, 0) + 1
    message = bus_pb2.WorkerEvent(
        events=[event],
        attempt=1,
        worker_id=worker,
        run_id=run,
        index=index,
        delivery=setup.delivery,
        handed_back=handed_back,
        ack_wait=ACK_WAIT,
    )
    (lost or setup.lost).heard(message, time.time() - age)
    await world.store.apply(incoming(message, next(setup.seqs)))


@asynccontextmanager
async def replica(setup: Setup, world: World) -> AsyncIterator[LostWorkers]:
    """Another router replica's watch over lost workers, on the same database."""
    lost = LostWorkers(setup.nc, world.bus, world.store, setup.hub, LOST_AFTER, every=0.05)
    task = asyncio.create_task(lost.run())
    try:
        yield lost
    finally:
        task.cancel()


async def lost_notes(store: JobStore, job_id: str) -> list[str]:
    return [m async for e in store.replay(job_id, 0) if "was lost" in (m := e.progress.message)]


async def answering(setup: Setup, world: World, job_ids: list[str]) -> Subscription:
    """A live worker, answering that it runs `job_ids`."""

    async def on_request(msg: Msg) -> None:
        await msg.respond(bus_pb2.WorkerRunning(job_ids=job_ids).SerializeToString())

    return await setup.nc.subscribe(world.bus.worker_subject(WORKER), cb=on_request)


async def test_a_worker_with_no_connection_has_its_jobs_sent_on_and_watchers_told(
    world: World, setup: Setup
) -> None:
    job = await created(world.store)
    await heard(setup, world, job.id)

    await eventually(lambda: setup.acks == [b"-NAK"], within=10)
    events = [e async for e in world.store.replay(job.id, 0)]
    assert events[-1].state == job_pb2.JOB_STATE_PROCESSING
    assert events[-1].progress.message == (
        f"worker {WORKER} was lost (its NATS connection closed); the job goes to another worker"
    )
    assert events[-1].handed_back  # watchers keep showing why while the next run starts
    # Once: the worker is forgotten with its jobs.
    await asyncio.sleep(LOST_AFTER * 3)
    assert setup.acks == [b"-NAK"]


async def test_a_worker_slow_to_answer_is_not_taken_for_lost(world: World, setup: Setup) -> None:
    job = await created(world.store)

    async def never_answer(msg: Msg) -> None:
        pass

    sub = await setup.nc.subscribe(world.bus.worker_subject(WORKER), cb=never_answer)
    await heard(setup, world, job.id)
    await asyncio.sleep(LOST_AFTER * 6)
    await sub.unsubscribe()
    assert setup.acks == []


async def test_jobs_a_live_worker_no_longer_runs_are_forgotten(world: World, setup: Setup) -> None:
    job = await created(world.store)
    sub = await answering(setup, world, [])
    await heard(setup, world, job.id)
    # Several rounds of asking: the answer leaves the job out.
    await asyncio.sleep(LOST_AFTER * 3)
    await sub.unsubscribe()
    await asyncio.sleep(LOST_AFTER * 6)
    assert setup.acks == []


async def test_a_job_a_worker_still_runs_is_sent_on_once_it_is_gone(
    world: World, setup: Setup
) -> None:
    job = await created(world.store)
    sub = await answering(setup, world, [job.id])
    await heard(setup, world, job.id)
    await asyncio.sleep(LOST_AFTER * 3)
    assert setup.acks == []
    await sub.unsubscribe()
    await eventually(lambda: setup.acks == [b"-NAK"], within=10)


async def test_an_ended_run_is_not_sent_on(world: World, setup: Setup) -> None:
    job = await created(world.store)
    await heard(setup, world, job.id)
    await heard(setup, world, job.id, job_pb2.JOB_STATE_COMPLETED)
    await asyncio.sleep(LOST_AFTER * 6)
    assert setup.acks == []


async def test_a_run_jetstream_may_have_sent_on_already_is_left_to_it(
    world: World, setup: Setup
) -> None:
    """Last heard from past two thirds of its ack wait ago (a router restarted, or far
    behind), the worker's heartbeats may have lapsed long enough for JetStream to send the
    job to another worker, whom a nak would take it from."""
    job = await created(world.store)
    await heard(setup, world, job.id, age=ACK_WAIT * 2 / 3)
    await asyncio.sleep(LOST_AFTER * 6)
    assert setup.acks == []
    assert await lost_notes(world.store, job.id) == []
    assert setup.lost.watched == set()


async def test_with_lost_after_0_nothing_is_kept(world: World, setup: Setup) -> None:
    job = await created(world.store)
    off = LostWorkers(setup.nc, world.bus, world.store, setup.hub, lost_after=0)
    await heard(setup, world, job.id, lost=off)
    assert off.watched == set()


async def test_a_worker_that_stopped_cleanly_is_not_taken_for_lost(
    world: World, setup: Setup
) -> None:
    """It handed its jobs back itself; another nak could send one on twice."""
    job = await created(world.store)
    await heard(setup, world, job.id, worker="left-w2")
    await asyncio.sleep(LOST_AFTER * 6)
    assert setup.acks == []


async def test_two_replicas_send_a_run_on_once(world: World, setup: Setup) -> None:
    """Each replica heard from the run, and each finds its worker gone; a second nak through
    the delivery would send the job on again while it runs anew elsewhere."""
    job = await created(world.store)
    async with replica(setup, world) as other:
        await heard(setup, world, job.id)
        await heard(setup, world, job.id, lost=other)
        await eventually(lambda: not setup.lost.watched and not other.watched, within=10)
    assert setup.acks == [b"-NAK"]
    assert len(await lost_notes(world.store, job.id)) == 1


async def test_a_run_delivered_again_since_is_not_sent_on(world: World, setup: Setup) -> None:
    """The job went to another worker (after the ack wait, say) before this one's connection
    closed: it runs there now."""
    job = await created(world.store)
    await heard(setup, world, job.id)
    # Recorded by another replica: the second delivery's run began on w2.
    async with replica(setup, world) as other:
        await heard(setup, world, job.id, worker="w2", run="r2", lost=other)
    await eventually(lambda: not setup.lost.watched, within=10)
    assert setup.acks == []
    assert await lost_notes(world.store, job.id) == []


async def test_a_run_that_handed_its_job_back_is_not_sent_on(world: World, setup: Setup) -> None:
    """It failed and handed the job back to retry later, then died; the retry may have
    begun elsewhere already, or must wait out its backoff."""
    job = await created(world.store)
    await heard(setup, world, job.id)
    # The hand-back reached another replica; this one heard only of the run going on.
    async with replica(setup, world) as other:
        await heard(setup, world, job.id, handed_back=True, lost=other)
        assert not other.watched
    await eventually(lambda: not setup.lost.watched, within=10)
    assert setup.acks == []
    assert await lost_notes(world.store, job.id) == []


async def test_a_job_sent_on_survives_a_nats_restart(database: Database, tmp_path: Path) -> None:
    """As when `genmesh up` restarts its own server before a worker is back to take the job:
    a nak the server kept in memory only would send it again after the ack wait (600 s)."""
    with private_nats(tmp_path / "nats") as server:
        await server.start()
        bus = Bus(unique("t"))
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=600.0)
        async with (
            open_database(database.url, metadata) as engine,
            connect(server.url, "router") as nc,
        ):
            js = nc.jetstream()
            await bus.ensure_streams(js)
            store = JobStore(engine)
            job = await created(store)
            await js.publish(bus.jobs_subject("a"), job.SerializeToString())
            # The worker that takes the job dies with its connection.
            async with connect(server.url, "worker") as dead:
                jobs = PullConsumer(dead, dead.jetstream(), bus.jobs_stream, "worker")
                await jobs.start(bus.jobs_subject("a"), config)
                [msg] = await jobs.fetch(1, wait=5.0)
            message = bus_pb2.WorkerEvent(
                events=[job_pb2.JobEvent(job_id=job.id, state=job_pb2.JOB_STATE_PROCESSING)],
                attempt=1,
                worker_id=WORKER,
                run_id="r1",
                index=1,
                delivery=msg.reply,
                ack_wait=ACK_WAIT,
            )
            await store.apply(incoming(message, 1))
            hub = WatchHub(nc, bus)
            lost = LostWorkers(nc, bus, store, hub, LOST_AFTER, every=0.05)
            lost.heard(message, time.time())
            task = asyncio.create_task(lost.run())
            try:
                await eventually(lambda: lost_notes(store, job.id), within=10)
            finally:
                task.cancel()
            await nc.flush()  # the nak has reached the server
            server.stop()
            await server.start()
            await eventually(lambda: nc.is_connected, within=10)
            taker = PullConsumer(nc, js, bus.jobs_stream, "worker")
            await taker.start(bus.jobs_subject("a"), config)
            again: list[Msg] = []
            for _ in range(10):
                again = again or await taker.fetch(1, wait=1.0)
            await taker.close()
            assert [m.data for m in again] == [msg.data]
