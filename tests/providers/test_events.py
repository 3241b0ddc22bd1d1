"""EventPublisher against a real JetStream: what one job delivery's events become on the
events stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext

from genmesh.v1 import bus_pb2, job_pb2
from services.common.bus import Bus
from services.providers.events import EventPublisher

PROCESSING = job_pb2.JOB_STATE_PROCESSING


@pytest.fixture
def bus(nats_prefix: str) -> Bus:
    return Bus(nats_prefix)


@pytest.fixture
async def js(nats_url: str, bus: Bus) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js)
        yield js
    finally:
        await nc.close()


def progress(message: str) -> job_pb2.JobEvent:
    event = job_pb2.JobEvent(state=PROCESSING)
    event.progress.message = message
    return event


async def stored(js: JetStreamContext, bus: Bus) -> list[tuple[str, list[str]]]:
    """Every message on the events stream: its id and its events' progress messages (the
    outcome as its state name)."""
    info = await js.stream_info(bus.events_stream)
    out = []
    for seq in range(1, info.state.last_seq + 1):
        raw = await js.get_msg(bus.events_stream, seq)
        wrapper = bus_pb2.WorkerEvent.FromString(raw.data or b"")
        labels = [
            e.progress.message if e.state == PROCESSING else job_pb2.JobState.Name(e.state)
            for e in wrapper.events
        ]
        assert all(e.job_id == "j1" for e in wrapper.events)
        assert wrapper.attempt == 2 and wrapper.worker_id == "w"
        out.append(((raw.headers or {}).get("Nats-Msg-Id", ""), labels))
    return out


def publisher(
    js: JetStreamContext, bus: Bus, linger: float, progress_linger: float | None = None
) -> EventPublisher:
    return EventPublisher(
        js, bus, "j1", 2, "w", linger, linger if progress_linger is None else progress_linger
    )


async def stored_soon(js: JetStreamContext, bus: Bus, count: int) -> list[tuple[str, list[str]]]:
    """The stream's messages once there are `count` of them (or after 10 s)."""
    for _ in range(500):
        found = await stored(js, bus)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    return await stored(js, bus)


async def test_a_quick_jobs_progress_travels_with_its_outcome(
    js: JetStreamContext, bus: Bus
) -> None:
    events = publisher(js, bus, linger=5.0)
    await events.publish(progress("started"))
    await events.publish(progress("half way"))
    await events.publish(job_pb2.JobEvent(state=job_pb2.JOB_STATE_COMPLETED))
    assert await stored(js, bus) == [("j1:2:end", ["started", "half way", "JOB_STATE_COMPLETED"])]


async def test_progress_goes_out_after_the_linger_without_waiting_for_the_outcome(
    js: JetStreamContext, bus: Bus
) -> None:
    events = publisher(js, bus, linger=0.05)
    await events.publish(progress("started"))
    await events.publish(progress("step 1"))
    for _ in range(200):
        if await stored(js, bus):
            break
        await asyncio.sleep(0.02)
    first = f"j1:2:{events.delivery_id}:1"
    assert await stored(js, bus) == [(first, ["started", "step 1"])]
    await events.publish(progress("step 2"))
    await events.publish(job_pb2.JobEvent(state=job_pb2.JOB_STATE_FAILED))
    assert await stored(js, bus) == [
        (first, ["started", "step 1"]),
        ("j1:2:end", ["step 2", "JOB_STATE_FAILED"]),
    ]


async def test_a_change_of_state_goes_out_soon_and_progress_waits_its_longer_linger(
    js: JetStreamContext, bus: Bus
) -> None:
    events = publisher(js, bus, linger=0.02, progress_linger=60.0)
    await events.publish(progress("started"))  # QUEUED -> PROCESSING: a change
    run = f"j1:2:{events.delivery_id}"
    assert await stored_soon(js, bus, 1) == [(f"{run}:1", ["started"])]
    await events.publish(progress("step 1"))
    await events.publish(progress("step 2"))
    await asyncio.sleep(0.5)  # far past the short linger: progress alone is held
    assert len(await stored(js, bus)) == 1
    preview = job_pb2.JobEvent(state=job_pb2.JOB_STATE_PREVIEW_READY)
    preview.preview.id = "a1"
    await events.publish(preview)  # another change: takes the held progress along
    assert (await stored_soon(js, bus, 2))[1] == (
        f"{run}:2",
        ["step 1", "step 2", "JOB_STATE_PREVIEW_READY"],
    )
    # Progress after a preview leaves the job PREVIEW_READY: no change, so it is held.
    await events.publish(progress("step 3"))
    await asyncio.sleep(0.5)
    assert len(await stored(js, bus)) == 2
    later = job_pb2.JobEvent(state=job_pb2.JOB_STATE_PREVIEW_READY)
    later.preview.id = "a2"  # a new preview in the same state is news too
    await events.publish(later)
    assert (await stored_soon(js, bus, 3))[2] == (
        f"{run}:3",
        ["step 3", "JOB_STATE_PREVIEW_READY"],
    )


async def test_progress_reported_while_a_message_is_stored_waits_its_own_linger(
    js: JetStreamContext, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It went out straight after the message before it: a provider reporting faster than a
    # publish takes sent a message for nearly every report, whatever the linger.
    events = publisher(js, bus, linger=0.02, progress_linger=60.0)
    real_publish = js.publish
    reported: list[bool] = []

    async def publish_with_a_report_meanwhile(*args: object, **kwargs: object) -> object:
        if not reported:
            reported.append(True)
            await events.publish(progress("step 1"))  # while "started" is being stored
        return await real_publish(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(js, "publish", publish_with_a_report_meanwhile)
    await events.publish(progress("started"))
    run = f"j1:2:{events.delivery_id}"
    assert await stored_soon(js, bus, 1) == [(f"{run}:1", ["started"])]
    await asyncio.sleep(0.5)
    assert len(await stored(js, bus)) == 1
    await events.flush()
    assert (await stored(js, bus))[1] == (f"{run}:2", ["step 1"])


async def test_flush_publishes_held_progress_at_once(js: JetStreamContext, bus: Bus) -> None:
    events = publisher(js, bus, linger=60.0)
    await events.publish(progress("retrying in 1.0s"))
    await events.flush()
    prefix = f"j1:2:{events.delivery_id}"
    assert await stored(js, bus) == [(f"{prefix}:1", ["retrying in 1.0s"])]
    # A later message of the same delivery gets the next id.
    await events.publish(progress("again"))
    await events.flush()
    assert [msg_id for msg_id, _ in await stored(js, bus)] == [f"{prefix}:1", f"{prefix}:2"]


async def test_a_handed_back_runs_note_is_marked_for_watchers_and_its_progress_is_not(
    js: JetStreamContext, bus: Bus
) -> None:
    events = publisher(js, bus, linger=60.0)
    await events.publish(progress("step 2"))
    await events.hand_back(progress("the worker is stopping; the job goes back to the queue"))
    raw = await js.get_msg(bus.events_stream, 1)
    wrapper = bus_pb2.WorkerEvent.FromString(raw.data or b"")
    # Watchers keep showing the note's why while the next run starts (genmesh_cli.display).
    assert [(e.progress.message, e.handed_back) for e in wrapper.events] == [
        ("step 2", False),
        ("the worker is stopping; the job goes back to the queue", True),
    ]
    assert wrapper.handed_back


async def test_a_rerun_of_the_same_attempt_has_its_progress_stored_too(
    js: JetStreamContext, bus: Bus
) -> None:
    # Two deliveries of one attempt (a worker died mid-job): the second run's progress is
    # news, not a repeat, whatever delivery count JetStream reported to either.
    for run in ("first run", "second run"):
        events = publisher(js, bus, linger=60.0)
        await events.publish(progress(run))
        await events.flush()
    assert [labels for _, labels in await stored(js, bus)] == [["first run"], ["second run"]]


async def test_every_message_names_its_run_and_its_place_in_it(
    js: JetStreamContext, bus: Bus
) -> None:
    # The router applies a run's messages by these numbers, whichever replica gets which.
    first = publisher(js, bus, linger=60.0)
    await first.publish(progress("started"))
    await first.flush()
    await first.publish(progress("half way"))
    await first.flush()
    await first.publish(job_pb2.JobEvent(state=job_pb2.JOB_STATE_FAILED))
    second = publisher(js, bus, linger=60.0)  # a re-run numbers its messages afresh
    await second.publish(progress("restarted"))
    await second.flush()
    info = await js.stream_info(bus.events_stream)
    places = []
    for seq in range(1, info.state.last_seq + 1):
        raw = await js.get_msg(bus.events_stream, seq)
        wrapper = bus_pb2.WorkerEvent.FromString(raw.data or b"")
        places.append((wrapper.run_id, wrapper.index))
    assert places == [
        (first.delivery_id, 1),
        (first.delivery_id, 2),
        (first.delivery_id, 3),
        (second.delivery_id, 1),
    ]
    assert first.delivery_id != second.delivery_id


async def test_an_outcome_published_twice_is_stored_once(js: JetStreamContext, bus: Bus) -> None:
    # A redelivered job whose first delivery published its outcome but died before acking.
    for _ in range(2):
        events = publisher(js, bus, linger=5.0)
        await events.publish(progress("started"))
        await events.publish(job_pb2.JobEvent(state=job_pb2.JOB_STATE_COMPLETED))
    assert await stored(js, bus) == [("j1:2:end", ["started", "JOB_STATE_COMPLETED"])]


async def test_a_failed_progress_publish_is_raised_by_the_outcome(
    js: JetStreamContext, bus: Bus
) -> None:
    # No stream takes this prefix's subjects, so JetStream refuses every publish.
    events = publisher(js, Bus(bus.prefix + "-nostream"), linger=0.0)
    await events.publish(progress("started"))
    await asyncio.sleep(0.1)
    await events.publish(progress("more"))  # held: the sender has already failed
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await events.publish(job_pb2.JobEvent(state=job_pb2.JOB_STATE_COMPLETED))
