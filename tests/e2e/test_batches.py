"""Batches through the real mesh: SubmitBatch all or none, WatchBatch merged and exact,
ListJobs by batch, idempotency keys across calls; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2
from services.common.parameters import dict_to_struct
from services.common.tenancy import tenant_metadata
from services.router.transitions import TERMINAL
from tests.mesh import Mesh


def spec(
    prompt: str, key: str = "", provider: str = "sandbox", **params: object
) -> job_pb2.JobSpec:
    params = {"latency_ms": 200, "width": 32, "height": 32, "steps": 2, **params}
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt=prompt,
        provider=provider,
        idempotency_key=key,
        parameters=dict_to_struct(params),
    )


async def submit_batch(
    mesh: Mesh, specs: list[job_pb2.JobSpec]
) -> generate_service_pb2.SubmitBatchResponse:
    request = generate_service_pb2.SubmitBatchRequest(specs=specs)
    reply: generate_service_pb2.SubmitBatchResponse = await mesh.generate.SubmitBatch(request)
    return reply


async def list_ids(mesh: Mesh, batch_id: str = "", *, top_level_only: bool = False) -> list[str]:
    request = job_service_pb2.ListJobsRequest(
        page_size=500, batch_id=batch_id, top_level_only=top_level_only
    )
    reply = await mesh.jobs.ListJobs(request)
    assert not reply.next_page_token
    return sorted(job.id for job in reply.jobs)


async def watch_batch(mesh: Mesh, batch_id: str) -> list[job_service_pb2.WatchBatchResponse]:
    call = mesh.jobs.WatchBatch(job_service_pb2.WatchBatchRequest(batch_id=batch_id), timeout=90)
    return [reply async for reply in call]


async def test_fifty_prompts_one_call_watched_whole(mesh: Mesh) -> None:
    alone = await mesh.generate.Submit(
        generate_service_pb2.SubmitRequest(spec=spec("not in the batch"))
    )
    # Every fifth job fails on purpose, so the summaries count two outcomes.
    specs = [
        spec(f"fox number {i}", fail_rate=1.0, fail_kind="fatal")
        if i % 5 == 0
        else spec(f"fox number {i}")
        for i in range(50)
    ]
    reply = await submit_batch(mesh, specs)
    assert reply.batch_id.startswith("b_")
    assert len(reply.jobs) == 50
    assert [job.spec.prompt for job in reply.jobs] == [s.prompt for s in specs]
    assert {job.batch_id for job in reply.jobs} == {reply.batch_id}
    assert all(job.state == job_pb2.JOB_STATE_QUEUED for job in reply.jobs)
    ids = sorted(job.id for job in reply.jobs)
    assert len(set(ids)) == 50

    messages = await watch_batch(mesh, reply.batch_id)

    # The summary, then each job as it is now.
    first = messages[0].summary
    assert messages[0].WhichOneof("update") == "summary"
    assert (first.batch_id, first.total) == (reply.batch_id, 50)
    snapshot = {m.job.id: m.job for m in messages[1:51]}
    assert all(m.WhichOneof("update") == "job" for m in messages[1:51])
    assert sorted(snapshot) == ids
    assert all(job.batch_id == reply.batch_id for job in snapshot.values())

    events: dict[str, list[job_pb2.JobEvent]] = {job_id: [] for job_id in ids}
    summaries = [first]
    previous = job_pb2.JobEvent()
    for message in messages[51:]:
        which = message.WhichOneof("update")
        assert which in ("event", "summary")
        if which == "event":
            events[message.event.job_id].append(message.event)
        else:
            # A new summary exactly when a job has just ended.
            assert previous.state in TERMINAL
            summaries.append(message.summary)
        previous = message.event if which == "event" else job_pb2.JobEvent()
    # The stream closed after the last job ended, with its summary.
    assert messages[-1].WhichOneof("update") == "summary"

    for job_id, seen in events.items():
        after = snapshot[job_id].last_sequence
        # Every later event of each job, once, in order: what WatchJob replays after it.
        assert [e.sequence for e in seen] == list(range(after + 1, after + 1 + len(seen)))
        history = await mesh.watch(job_id, after=after)
        assert [e.SerializeToString() for e in seen] == [e.SerializeToString() for e in history]
        ended = seen[-1].state if seen else snapshot[job_id].state
        assert ended in TERMINAL

    for s in summaries:
        assert s.total == s.queued + s.running + s.completed + s.failed + s.cancelled == 50
    running_at_start = sum(job.state not in TERMINAL for job in snapshot.values())
    assert len(summaries) == 1 + running_at_start
    ended_counts = [s.completed + s.failed + s.cancelled for s in summaries]
    assert ended_counts == sorted(ended_counts)
    last = summaries[-1]
    assert (last.completed, last.failed, last.cancelled) == (40, 10, 0)

    # ListJobs: the batch filter returns exactly its jobs; without it the lone job too.
    assert await list_ids(mesh, reply.batch_id) == ids
    assert await list_ids(mesh) == sorted([*ids, alone.job.id])
    assert await list_ids(mesh, "b_" + "0" * 32) == []

    # A batch that has ended: the snapshot, then the stream closes at once.
    again = await watch_batch(mesh, reply.batch_id)
    assert [m.WhichOneof("update") for m in again] == ["summary"] + ["job"] * 50
    assert again[0].summary == last


@pytest.mark.parametrize(
    ("bad_index", "bad", "code", "words"),
    [
        (7, spec(""), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (
            0,
            spec("fox", provider="no-such-provider"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no-such-provider",
        ),
        (11, spec("fox", width=-5), grpc.StatusCode.INVALID_ARGUMENT, "width"),
        (
            3,
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_TEXT, prompt="fox", draft_first=True),
            grpc.StatusCode.INVALID_ARGUMENT,
            "draft_first applies to text-to-image, image-to-image and image-to-video",
        ),
    ],
)
async def test_a_bad_spec_fails_the_whole_batch_and_names_its_index(
    mesh: Mesh, bad_index: int, bad: job_pb2.JobSpec, code: grpc.StatusCode, words: str
) -> None:
    before = await list_ids(mesh)
    specs = [spec(f"fox {i}") for i in range(12)]
    specs[bad_index] = bad
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit_batch(mesh, specs)
    assert refused.value.code() == code
    details = refused.value.details() or ""
    assert details.startswith(f"specs[{bad_index}]: "), details
    assert words in details
    assert await list_ids(mesh) == before


@pytest.mark.parametrize("count", [0, 1001])
async def test_batch_size_is_bounded(mesh: Mesh, count: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit_batch(mesh, [spec(f"fox {i}") for i in range(count)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1,000" in (refused.value.details() or "")
    assert await list_ids(mesh) == []


async def test_idempotency_keys_apply_per_spec_across_calls(mesh: Mesh) -> None:
    first = await submit_batch(mesh, [spec("fox", "key-a"), spec("owl", "key-b")])
    # The same call again (a retry): the same jobs and the same batch.
    retried = await submit_batch(mesh, [spec("fox", "key-a"), spec("owl", "key-b")])
    assert retried.batch_id == first.batch_id
    assert [j.id for j in retried.jobs] == [j.id for j in first.jobs]

    # A new batch reusing one key gets that earlier job; its other spec is a new job.
    mixed = await submit_batch(mesh, [spec("cat"), spec("owl", "key-b")])
    assert mixed.batch_id != first.batch_id
    assert mixed.jobs[1].id == first.jobs[1].id
    assert mixed.jobs[1].batch_id == first.batch_id
    assert mixed.jobs[0].batch_id == mixed.batch_id
    # Both belong to the new batch, as the reply lists them; the earlier job to its own too.
    assert await list_ids(mesh, mixed.batch_id) == sorted(j.id for j in mixed.jobs)
    assert await list_ids(mesh, first.batch_id) == sorted(j.id for j in first.jobs)

    # One key twice within a batch: one job for both specs.
    twice = await submit_batch(mesh, [spec("elk", "key-c"), spec("elk", "key-c")])
    assert twice.jobs[0].id == twice.jobs[1].id
    assert await list_ids(mesh, twice.batch_id) == [twice.jobs[0].id]

    # A key reused with a different spec refuses the whole call, naming the spec.
    before = await list_ids(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit_batch(mesh, [spec("new"), spec("not a fox", "key-a")])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (refused.value.details() or "").startswith("specs[1]: ")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit_batch(mesh, [spec("elk", "key-d"), spec("moose", "key-d")])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "specs[0]" in (refused.value.details() or "")
    assert await list_ids(mesh) == before


async def test_a_pipeline_spec_is_refused_even_with_the_key_of_its_earlier_job(
    mesh: Mesh,
) -> None:
    steps = [job_pb2.PipelineStep(name="say", task=job_pb2.TASK_TEXT_TO_TEXT, prompt="{prompt}")]
    pipeline = job_pb2.JobSpec(
        prompt="fox", pipeline=job_pb2.PipelineSpec(steps=steps), idempotency_key="pipe"
    )
    await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=pipeline))
    # Top-level only: the pipeline makes its step's job meanwhile.
    before = await list_ids(mesh, top_level_only=True)
    for specs in ([spec("owl"), pipeline], [spec("owl"), pipeline, pipeline]):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await submit_batch(mesh, specs)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("specs[1]: a pipeline runs on its own")
    assert await list_ids(mesh, top_level_only=True) == before


async def test_concurrent_calls_with_the_same_keys_make_one_batch(mesh: Mesh) -> None:
    specs = [spec(f"fox {i}", f"race-{i}") for i in range(20)]
    one, two = await asyncio.gather(submit_batch(mesh, specs), submit_batch(mesh, specs))
    assert [j.id for j in one.jobs] == [j.id for j in two.jobs]
    assert one.batch_id == two.batch_id
    assert await list_ids(mesh) == sorted(j.id for j in one.jobs)
    # A single Submit with one of the keys gets the batch's job.
    alone = await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=specs[3]))
    assert alone.job.id == one.jobs[3].id


async def test_a_batch_of_jobs_made_elsewhere_lists_and_watches_every_job_it_returned(
    mesh: Mesh,
) -> None:
    # Keys first used by a Submit and by another batch: the reply's batch id named no batch
    # (WatchBatch NOT_FOUND) or one without those jobs.
    alone = await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec("owl", "o")))
    other = await submit_batch(mesh, [spec("elk", "e")])
    mixed = await submit_batch(mesh, [spec("owl", "o"), spec("elk", "e"), spec("new fox")])
    assert [j.id for j in mixed.jobs[:2]] == [alone.job.id, other.jobs[0].id]
    assert mixed.batch_id != other.batch_id
    returned = sorted(j.id for j in mixed.jobs)
    assert await list_ids(mesh, mixed.batch_id) == returned
    watched = await watch_batch(mesh, mixed.batch_id)
    assert watched[0].summary.total == 3
    assert sorted(m.job.id for m in watched if m.HasField("job")) == returned
    # The other batch is as it was.
    assert await list_ids(mesh, other.batch_id) == [other.jobs[0].id]

    only_earlier = await submit_batch(mesh, [spec("owl", "o")])
    assert [j.id for j in only_earlier.jobs] == [alone.job.id]
    assert await list_ids(mesh, only_earlier.batch_id) == [alone.job.id]
    assert (await watch_batch(mesh, only_earlier.batch_id))[0].summary.total == 1
    # A retry of a batch that created every job it lists is still that batch.
    assert (await submit_batch(mesh, [spec("elk", "e")])).batch_id == other.batch_id


async def test_a_retried_batch_of_jobs_made_elsewhere_is_the_same_batch(mesh: Mesh) -> None:
    # Its keys first used by a Submit and by another batch, so its jobs' own batch ids differ.
    alone = await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec("owl", "o")))
    other = await submit_batch(mesh, [spec("elk", "e")])
    specs = [spec("owl", "o"), spec("elk", "e"), spec("fox", "f")]
    replies = [await submit_batch(mesh, specs) for _ in range(3)]
    assert len({reply.batch_id for reply in replies}) == 1
    assert {tuple(j.id for j in reply.jobs) for reply in replies} == {
        tuple(j.id for j in replies[0].jobs)
    }
    assert [j.id for j in replies[0].jobs[:2]] == [alone.job.id, other.jobs[0].id]
    assert await list_ids(mesh, replies[0].batch_id) == sorted(j.id for j in replies[0].jobs)
    # Only the keys made elsewhere: no spec is new, and a retry is still one batch.
    made_elsewhere = [spec("owl", "o"), spec("elk", "e")]
    again = [await submit_batch(mesh, made_elsewhere) for _ in range(3)]
    assert len({reply.batch_id for reply in again}) == 1
    assert again[0].batch_id != replies[0].batch_id
    assert await list_ids(mesh, again[0].batch_id) == sorted([alone.job.id, other.jobs[0].id])
    # The batch that made a job is as it was.
    assert await list_ids(mesh, other.batch_id) == [other.jobs[0].id]


async def test_watch_batch_unknown_or_other_tenant_is_not_found(mesh: Mesh) -> None:
    for batch_id, code in (
        ("b_" + "0" * 32, grpc.StatusCode.NOT_FOUND),
        ("", grpc.StatusCode.INVALID_ARGUMENT),  # no id at all: a bad request
    ):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await watch_batch(mesh, batch_id)
        assert missing.value.code() == code

    reply = await submit_batch(mesh, [spec("fox")])
    call = mesh.jobs.WatchBatch(
        job_service_pb2.WatchBatchRequest(batch_id=reply.batch_id),
        metadata=tenant_metadata("someone-else"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        _ = [m async for m in call]
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    reply_other = await mesh.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(batch_id=reply.batch_id),
        metadata=tenant_metadata("someone-else"),
    )
    assert list(reply_other.jobs) == []
