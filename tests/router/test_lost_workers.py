"""The router sends a lost worker's jobs on at once, and only a lost one's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from genmesh.v1 import bus_pb2, job_pb2
from services.router.lost_workers import LostWorkers
from services.router.watch import WatchHub
from tests.infra import eventually
from tests.router.helpers import World, created

# The router's side does not depend on its database.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

WORKER = "w1"
# How long each test gives a worker to be taken for lost, were it going to be.
LOST_AFTER = 0.3


@dataclass
class Setup:
    nc: Client
    lost: LostWorkers
    # What reached the job message's reply subject.
    acks: list[bytes]
    delivery: str


@pytest.fixture
async def setup(world: World, nats_url: str) -> AsyncIterator[Setup]:
    nc = await nats.connect(nats_url)
    hub = WatchHub(nc, world.bus)
    await hub.start()
    acks: list[bytes] = []
    delivery = f"{world.bus.prefix}.test.ack.{WORKER}"

    async def on_ack(msg: Msg) -> None:
        acks.append(msg.data)

    sub = await nc.subscribe(delivery, cb=on_ack)
    # Workers named "left-…" stopped cleanly, as their registration would say.
    lost = LostWorkers(
        nc, world.bus, world.store, hub, LOST_AFTER, lambda w: w.startswith("left-"), every=0.05
    )
    task = asyncio.create_task(lost.run())
    try:
        yield Setup(nc, lost, acks, delivery)
    finally:
        task.cancel()
        await sub.unsubscribe()
        await hub.stop()
        await nc.close()


def heard(
    setup: Setup, job_id: str, state: int = job_pb2.JOB_STATE_PROCESSING, worker: str = WORKER
) -> None:
    """The recorder fetched a message of `worker`'s run of the job."""
    event = job_pb2.JobEvent(job_id=job_id, state=state)  # type: ignore[arg-type]
    message = bus_pb2.WorkerEvent(
        events=[event], worker_id=worker, run_id="r1", index=1, delivery=setup.delivery
    )
    setup.lost.heard(message)


async def answering(setup: Setup, world: World, job_ids: list[str]) -> Subscription:
    """A live worker, answering that it runs `job_ids`."""

    async def on_request(msg: Msg) -> None:
        await msg.respond(bus_pb2.WorkerRunning(job_ids=job_ids).SerializeToString())

    return await setup.nc.subscribe(world.bus.worker_subject(WORKER), cb=on_request)


async def test_a_worker_with_no_connection_has_its_jobs_sent_on_and_watchers_told(
    world: World, setup: Setup
) -> None:
    job = await created(world.store)
    heard(setup, job.id)

    await eventually(lambda: setup.acks == [b"-NAK"], within=10)
    events = [e async for e in world.store.replay(job.id, 0)]
    assert events[-1].state == job_pb2.JOB_STATE_PROCESSING
    assert events[-1].progress.message == (
        f"worker {WORKER} was lost (its NATS connection closed); the job goes to another worker"
    )
    # Once: the worker is forgotten with its jobs.
    await asyncio.sleep(LOST_AFTER * 3)
    assert setup.acks == [b"-NAK"]


async def test_a_worker_slow_to_answer_is_not_taken_for_lost(world: World, setup: Setup) -> None:
    job = await created(world.store)

    async def never_answer(msg: Msg) -> None:
        pass

    sub = await setup.nc.subscribe(world.bus.worker_subject(WORKER), cb=never_answer)
    heard(setup, job.id)
    await asyncio.sleep(LOST_AFTER * 6)
    await sub.unsubscribe()
    assert setup.acks == []


async def test_jobs_a_live_worker_no_longer_runs_are_forgotten(world: World, setup: Setup) -> None:
    job = await created(world.store)
    sub = await answering(setup, world, [])
    heard(setup, job.id)
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
    heard(setup, job.id)
    await asyncio.sleep(LOST_AFTER * 3)
    assert setup.acks == []
    await sub.unsubscribe()
    await eventually(lambda: setup.acks == [b"-NAK"], within=10)


async def test_an_ended_run_is_not_sent_on(world: World, setup: Setup) -> None:
    job = await created(world.store)
    heard(setup, job.id)
    heard(setup, job.id, job_pb2.JOB_STATE_COMPLETED)
    await asyncio.sleep(LOST_AFTER * 6)
    assert setup.acks == []


async def test_a_worker_that_stopped_cleanly_is_not_taken_for_lost(
    world: World, setup: Setup
) -> None:
    """It handed its jobs back itself; another nak could send one on twice."""
    job = await created(world.store)
    heard(setup, job.id, worker="left-w2")
    await asyncio.sleep(LOST_AFTER * 6)
    assert setup.acks == []
