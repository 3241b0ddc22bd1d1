"""Applying a worker's message of several events: every part once, in order, however often
the message is delivered."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.router.store import Incoming
from tests.router.helpers import World, created

PROCESSING = job_pb2.JOB_STATE_PROCESSING


def message(seq: int, *labels: str) -> list[Incoming]:
    """One worker message at stream sequence `seq`: progress events, "done" completes."""
    parts = []
    for part, label in enumerate(labels):
        event = job_pb2.JobEvent(job_id="j_fallback", state=PROCESSING)
        if label == "done":
            event.state = job_pb2.JOB_STATE_COMPLETED
        else:
            event.progress.message = label
        parts.append(Incoming("j_fallback", event, stream_seq=seq, attempt=1, part=part))
    return parts


async def recorded(world: World) -> list[tuple[int, str]]:
    events = [e async for e in world.store.replay("j_fallback", 0)]
    return [(e.sequence, e.progress.message or job_pb2.JobState.Name(e.state)) for e in events]


async def test_every_part_of_a_message_applies_in_order(world: World) -> None:
    await created(world.store)
    applied = await world.store.apply(message(5, "started", "half way", "done"))
    assert [e.sequence for e in applied] == [2, 3, 4]
    assert await recorded(world) == [
        (1, "JOB_STATE_QUEUED"),
        (2, "started"),
        (3, "half way"),
        (4, "JOB_STATE_COMPLETED"),
    ]
    job = await world.store.get("t", "j_fallback")
    assert job is not None and job.state == job_pb2.JOB_STATE_COMPLETED


async def test_a_redelivered_message_applies_nothing(world: World) -> None:
    await created(world.store)
    assert len(await world.store.apply(message(5, "started", "half way"))) == 2
    # Later, in another batch: the same message again, and an older one.
    assert await world.store.apply(message(5, "started", "half way")) == []
    assert await world.store.apply(message(3, "stale")) == []
    # The same message twice within one batch applies once.
    twice = message(7, "step 1", "step 2")
    assert [e.progress.message for e in await world.store.apply(twice + twice)] == [
        "step 1",
        "step 2",
    ]
    assert [label for _, label in await recorded(world)] == [
        "JOB_STATE_QUEUED",
        "started",
        "half way",
        "step 1",
        "step 2",
    ]


async def test_progress_after_a_preview_is_kept_and_the_job_stays_preview_ready(
    world: World,
) -> None:
    await created(world.store)
    await world.store.apply(message(5, "started"))
    preview = job_pb2.JobEvent(job_id="j_fallback", state=job_pb2.JOB_STATE_PREVIEW_READY)
    preview.preview.id = "a_preview"
    await world.store.apply([Incoming("j_fallback", preview, stream_seq=6, attempt=1)])
    # A provider keeps reporting progress (as PROCESSING) while it finishes the full image.
    applied = await world.store.apply(message(7, "step 3/4", "step 4/4"))
    assert [(e.state, e.progress.message) for e in applied] == [
        (job_pb2.JOB_STATE_PREVIEW_READY, "step 3/4"),
        (job_pb2.JOB_STATE_PREVIEW_READY, "step 4/4"),
    ]
    job = await world.store.get("t", "j_fallback")
    assert job is not None
    assert job.state == job_pb2.JOB_STATE_PREVIEW_READY and job.preview.id == "a_preview"
    assert job.progress.message == "step 4/4"
    await world.store.apply(message(8, "done"))
    assert [label for _, label in await recorded(world)] == [
        "JOB_STATE_QUEUED",
        "started",
        "JOB_STATE_PREVIEW_READY",
        "step 3/4",
        "step 4/4",
        "JOB_STATE_COMPLETED",
    ]
