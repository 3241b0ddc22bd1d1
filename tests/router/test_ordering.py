"""A job's worker messages apply in the order the worker published them, whichever router
replica takes which: on a real JetStream and a real database, with two replicas' recorders
sharing one consumer, and rule by rule in the store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import nats
import pytest
from nats.aio.msg import Msg

from genmesh.v1 import bus_pb2, job_pb2
from services.common.pulling import PullConsumer
from services.providers.events import EventPublisher
from services.router import ordering
from services.router.hedging import Hedger
from services.router.lost_workers import LostWorkers
from services.router.ordering import Runs, Verdict
from services.router.queues import QueueDepths
from services.router.recorder import Recorder
from services.router.store import Incoming, Routed
from services.router.watch import Listener, WatchHub
from tests.router.helpers import World, created

JOB = "j_fallback"
# Seconds a message has waited once it has been deferred long enough.
WAITED = ordering.DEFER_FOR
QUEUED = job_pb2.JOB_STATE_QUEUED
PROCESSING = job_pb2.JOB_STATE_PROCESSING
PREVIEW_READY = job_pb2.JOB_STATE_PREVIEW_READY
COMPLETED = job_pb2.JOB_STATE_COMPLETED


@dataclass
class Replica:
    recorder: Recorder
    hub: WatchHub
    events: PullConsumer


async def _never_stop(job_id: str, reason: str) -> None:
    raise AssertionError(f"no worker is to be stopped here ({job_id}: {reason})")


@pytest.fixture
async def replicas(world: World, nats_url: str) -> AsyncIterator[list[Replica]]:
    """Two router replicas' recorders on the world's store, each with its own connection
    and watch hub, fetching from the one shared recorder consumer."""
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(2):
            nc = await nats.connect(nats_url)
            stack.push_async_callback(nc.close)
            js = nc.jetstream()
            hub = WatchHub(nc, world.bus)
            await hub.start()
            stack.push_async_callback(hub.stop)
            queues = QueueDepths(js, world.bus)
            stack.push_async_callback(queues.stop)
            hedger = Hedger(world.store, world.fallback, hub, _never_stop, default_after=0)
            lost = LostWorkers(nc, world.bus, world.store, hub, lost_after=0)
            recorder = Recorder(
                nc, js, world.bus, world.store, hub, queues, world.fallback, hedger, lost
            )
            events = await recorder.consumer()
            stack.push_async_callback(events.close)
            out.append(Replica(recorder, hub, events))
        yield out


def _state(msg: Msg) -> int:
    return bus_pb2.WorkerEvent.FromString(msg.data).events[-1].state


async def recorded(world: World) -> list[tuple[int, str]]:
    events = [e async for e in world.store.replay(JOB, 0)]
    return [(e.sequence, e.progress.message or job_pb2.JobState.Name(e.state)) for e in events]


def heard(listener: Listener) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while not listener.queue.empty():
        event = listener.queue.get_nowait()
        out.append((event.sequence, event.state))
    return out


async def test_two_replicas_record_a_jobs_messages_in_the_order_they_were_published(
    world: World, replicas: list[Replica]
) -> None:
    await created(world.store)
    publisher = EventPublisher(world.js, world.bus, JOB, 1, "w", linger=60.0)
    started = job_pb2.JobEvent(state=PROCESSING)
    started.progress.message = "started"
    await publisher.publish(started)
    await publisher.flush()
    await publisher.publish(job_pb2.JobEvent(state=COMPLETED))

    first, second = replicas
    # One message each, as the shared consumer hands them out: the first replica takes
    # PROCESSING, the second COMPLETED.
    [processing] = await first.events.fetch(1, wait=5)
    [completed] = await second.events.fetch(1, wait=5)
    assert (_state(processing), _state(completed)) == (PROCESSING, COMPLETED)

    with first.hub.listen(JOB) as listener:
        # The second replica is quicker: COMPLETED comes before its predecessor is applied.
        await second.recorder.record([completed])
        await first.recorder.record([processing])
        came_again = await record_what_comes(first)
        assert heard(listener) == [(2, PROCESSING), (3, COMPLETED)]

    assert await recorded(world) == [
        (1, "JOB_STATE_QUEUED"),
        (2, "started"),
        (3, "JOB_STATE_COMPLETED"),
    ]
    job = await world.store.get("t", JOB)
    assert job is not None and job.state == COMPLETED and job.last_sequence == 3
    # COMPLETED had been handed back, and came again; then both were acked.
    assert came_again == [(completed.metadata.sequence.stream, 2)]
    assert await second.events.fetch(1, wait=0.3) == []


async def record_what_comes(replica: Replica) -> list[tuple[int, int]]:
    """Record what the replica fetches until a second passes without any; the stream
    sequence and delivery count of each message."""
    came = []
    while msgs := await replica.events.fetch(10, wait=1.0):
        came += [(m.metadata.sequence.stream, m.metadata.num_delivered) for m in msgs]
        await replica.recorder.record(msgs)
    return came


def sent(
    seq: int,
    run: str,
    index: int,
    *labels: str,
    attempt: int = 1,
    deliveries: int = 1,
    age: float = 0.0,
) -> list[Incoming]:
    """Message `index` of worker run `run`, at stream sequence `seq`: progress events by
    their message ("preview" shows one, "queued" steps back to QUEUED, "done" completes)."""
    parts = []
    for part, label in enumerate(labels):
        event = job_pb2.JobEvent(job_id=JOB, state=PROCESSING)
        if label == "done":
            event.state = COMPLETED
        else:
            if label == "preview":
                event.state = PREVIEW_READY
            elif label == "queued":
                event.state = job_pb2.JOB_STATE_QUEUED
            event.progress.message = label
        parts.append(
            Incoming(
                JOB,
                event,
                stream_seq=seq,
                attempt=attempt,
                part=part,
                run=run,
                index=index,
                deliveries=deliveries,
                age=age,
                outcome=labels[-1] == "done",
            )
        )
    return parts


async def apply(world: World, *messages: list[Incoming]) -> Routed:
    return await world.store.apply_routed([i for m in messages for i in m])


def labels(routed: Routed) -> list[str]:
    return [e.progress.message or job_pb2.JobState.Name(e.state) for e in routed.events]


async def test_a_message_before_its_predecessor_waits_for_it(world: World) -> None:
    await created(world.store)
    early = await apply(world, sent(6, "r", 2, "half way", "done"))
    assert (early.events, early.deferred) == ([], {6})
    # Its predecessor arrives, and then it again, each part once.
    assert labels(await apply(world, sent(5, "r", 1, "started"))) == ["started"]
    again = await apply(world, sent(6, "r", 2, "half way", "done", deliveries=2))
    assert (labels(again), again.deferred) == (["half way", "JOB_STATE_COMPLETED"], set())
    assert [label for _, label in await recorded(world)] == [
        "JOB_STATE_QUEUED",
        "started",
        "half way",
        "JOB_STATE_COMPLETED",
    ]


async def test_a_repeat_is_dropped_and_not_deferred(world: World) -> None:
    await created(world.store)
    assert labels(await apply(world, sent(5, "r", 1, "started", "step 1"))) == [
        "started",
        "step 1",
    ]
    repeat = await apply(world, sent(5, "r", 1, "started", "step 1", deliveries=2))
    assert (repeat.events, repeat.deferred) == ([], set())
    # The same message twice within one batch applies once.
    twice = sent(7, "r", 2, "step 2", "step 3")
    assert labels(await apply(world, twice, twice)) == ["step 2", "step 3"]
    # In order within one batch, as one replica fetches them.
    in_order = await apply(world, sent(8, "r", 3, "step 4"), sent(9, "r", 4, "done"))
    assert labels(in_order) == ["step 4", "JOB_STATE_COMPLETED"]


async def test_a_rerun_begins_afresh_and_the_run_it_replaced_is_stale(world: World) -> None:
    await created(world.store)
    assert labels(await apply(world, sent(5, "r1", 1, "started"))) == ["started"]
    # The job was redelivered: a new run begins at 1, past where the first began.
    assert labels(await apply(world, sent(9, "r2", 1, "restarted"))) == ["restarted"]
    # The first run's message published before the re-run began, arriving late: dropped,
    # as stream order would have, and not deferred.
    stale = await apply(world, sent(7, "r1", 2, "retrying"))
    assert (stale.events, stale.deferred) == ([], set())
    # A message a run sent before its first: message 1 of the run is still to come.
    gap = await apply(world, sent(12, "r3", 2, "elsewhere"))
    assert (gap.events, gap.deferred) == ([], {12})
    # The first run, still going after the re-run began, is heard in its turn.
    assert labels(await apply(world, sent(10, "r1", 3, "zombie"))) == ["zombie"]
    assert labels(await apply(world, sent(11, "r2", 2, "done"))) == ["JOB_STATE_COMPLETED"]


async def test_a_message_the_state_machine_drops_still_takes_its_turn(world: World) -> None:
    await created(world.store)
    assert labels(await apply(world, sent(5, "r", 1, "preview"))) == ["preview"]
    # A step backwards: dropped, but handled, so the message after it need not wait.
    backwards = await apply(world, sent(6, "r", 2, "queued"))
    assert (backwards.events, backwards.deferred) == ([], set())
    assert labels(await apply(world, sent(7, "r", 3, "preview"))) == ["preview"]


async def test_a_message_deferred_long_enough_applies_by_stream_order(world: World) -> None:
    await created(world.store)
    assert labels(await apply(world, sent(5, "r", 1, "started"))) == ["started"]
    # Message 2 never comes (it left the stream): message 3 waits, then stops waiting.
    waiting = await apply(
        world, sent(7, "r", 3, "on", deliveries=ordering.OVERDUE_AT - 1, age=WAITED)
    )
    assert (waiting.events, waiting.deferred) == ([], {7})
    late = await apply(world, sent(7, "r", 3, "on", deliveries=ordering.OVERDUE_AT, age=WAITED))
    assert (labels(late), late.deferred) == (["on"], set())
    # Should message 2 turn up after all, it is behind: dropped, and nothing waits.
    behind = await apply(world, sent(6, "r", 2, "lost"))
    assert (behind.events, behind.deferred) == ([], set())
    assert labels(await apply(world, sent(8, "r", 4, "done"))) == ["JOB_STATE_COMPLETED"]


async def test_an_overdue_message_stream_order_has_passed_is_dropped(world: World) -> None:
    await created(world.store)
    await apply(world, sent(5, "r1", 1, "started"))
    await apply(world, sent(9, "r2", 1, "elsewhere"), sent(10, "r2", 2, "on"))
    # An unknown run's message, not message 1, published before what has been applied.
    overdue = await apply(
        world, sent(8, "r9", 4, "old", deliveries=ordering.OVERDUE_AT, age=WAITED)
    )
    assert (overdue.events, overdue.deferred) == ([], set())


async def test_a_message_without_a_run_keeps_the_stream_order_rule(world: World) -> None:
    await created(world.store)
    assert labels(await apply(world, sent(7, "r", 1, "started"))) == ["started"]
    # From a worker before runs: what comes after the newest applied message applies, in
    # whatever order, and nothing is deferred.
    old = await apply(world, sent(6, "", 0, "earlier"), sent(9, "", 0, "later"))
    assert (labels(old), old.deferred) == (["later"], set())
    assert (await apply(world, sent(8, "", 0, "between"))).events == []


async def test_nothing_waits_for_a_job_that_has_ended(world: World) -> None:
    await created(world.store)
    await apply(world, sent(5, "r", 1, "done"))
    # A hedge's loser, say, still sending after the job ended out of turn: dropped at once.
    ended = await apply(world, sent(9, "other", 3, "late", attempt=2))
    assert (ended.events, ended.deferred) == ([], set())


def test_runs_of_different_attempts_never_supersede_each_other() -> None:
    # A hedged job: two attempts publish at once, each in its own order.
    runs = Runs()
    assert runs.place("a", 1, 1, 5, overdue=False) is Verdict.NEXT
    assert runs.place("b", 2, 1, 7, overdue=False) is Verdict.NEXT
    assert runs.place("a", 1, 2, 6, overdue=False) is Verdict.NEXT
    assert runs.place("b", 2, 3, 9, overdue=False) is Verdict.EARLY
    assert runs.place("b", 2, 2, 8, overdue=False) is Verdict.NEXT
    # A re-run of attempt 1 makes what the first run published before it stale; attempt
    # 2's runs are untouched.
    assert runs.place("c", 1, 1, 10, overdue=False) is Verdict.NEXT
    assert runs.place("a", 1, 3, 9, overdue=False) is Verdict.STALE
    assert runs.place("b", 2, 3, 9, overdue=False) is Verdict.NEXT
    # Kept in the row and read back the same.
    again = Runs.load(runs.dump())
    assert again.place("b", 2, 3, 9, overdue=False) is Verdict.REPEAT
    assert again.place("c", 1, 2, 11, overdue=False) is Verdict.NEXT


def test_an_attempt_remembers_its_latest_runs() -> None:
    runs = Runs()
    for i in range(ordering.KEEP + 2):
        assert runs.place(f"r{i}", 1, 1, 10 * (i + 1), overdue=False) is Verdict.NEXT
    stored = runs.dump()
    assert stored is not None
    assert {name for name, *_ in json.loads(stored)} == {
        f"r{i}" for i in range(2, ordering.KEEP + 2)
    }
    # A forgotten run's late message is still recognised as from before the later runs.
    assert Runs.load(stored).place("r0", 1, 2, 15, overdue=False) is Verdict.STALE


def test_a_run_is_taken_as_lost_once_and_only_while_it_is_the_latest() -> None:
    runs = Runs()
    runs.place("a", 1, 1, 5, overdue=False)
    runs.place("b", 2, 1, 6, overdue=False)
    runs.place("c", 2, 1, 7, overdue=False)
    runs.place("d", 3, 1, 8, overdue=False)
    runs.place("d", 3, 2, 9, overdue=False, ends=True)
    # Each replica's copy of the row, read back as stored.
    stored = Runs.load(runs.dump())
    assert stored.lose("a") == 1
    assert stored.lose("a") is None  # taken already
    assert stored.lose("b") is None  # delivered again since: c runs the job now
    assert stored.lose("d") is None  # handed back by its worker
    assert stored.lose("x") is None  # never heard of
    assert Runs.load(stored.dump()).lose("a") is None
    # A row stored before runs could end reads as before.
    assert Runs.load(json.dumps([["a", 1, 1, 5]])).lose("a") == 1


def test_a_deferred_message_waits_longer_than_a_dead_replica_holds_its_predecessor() -> None:
    # A replica that dies holding a message leaves it to come again after the ack wait.
    delays = [ordering.defer_delay(n) for n in range(1, ordering.OVERDUE_AT)]
    assert sum(delays) >= ordering.DEFER_FOR > ordering.LONGEST_ACK_WAIT
    assert sum(delays[:-1]) < ordering.DEFER_FOR
    assert delays[0] == ordering.FIRST_DELAY and max(delays) == ordering.MAX_DELAY
    assert not ordering.overdue(ordering.OVERDUE_AT - 1, WAITED)
    assert ordering.overdue(ordering.OVERDUE_AT, WAITED)


def test_waiting_takes_both_time_and_deferrals() -> None:
    # Redelivered often within seconds (batches failing while the database was away): not
    # a wait for a predecessor.
    assert not ordering.overdue(ordering.OVERDUE_AT * 3, 5.0)
    # Old but delivered once (a backlog after an outage): not a wait either.
    assert not ordering.overdue(1, ordering.DEFER_FOR * 2)
    # Old enough, whatever its delivery count says (JetStream has reported 1 on a
    # redelivery): nothing is handed back forever.
    assert ordering.overdue(1, ordering.GIVE_UP)


async def test_an_outcome_is_applied_even_from_a_run_given_up_on(world: World) -> None:
    await created(world.store)
    assert labels(await apply(world, sent(5, "a", 1, "started"))) == ["started"]
    # The job was redelivered; the new run began at 60. The first run had stored its
    # outcome at 50 before its worker died, and that message comes last.
    assert labels(await apply(world, sent(60, "b", 1, "again"))) == ["again"]
    assert labels(await apply(world, sent(40, "a", 2, "old news"))) == []
    # The attempt's one outcome (a later one would be discarded as a repeat by JetStream).
    assert labels(await apply(world, sent(50, "a", 3, "done"))) == ["JOB_STATE_COMPLETED"]
