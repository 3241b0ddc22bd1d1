"""A job's whole life through the generated stubs, on real NATS and a real database."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import grpc
import pytest
from PIL import Image
from sqlalchemy import update

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2
from services.common.parameters import dict_to_struct
from services.router.store import jobs
from services.router.transitions import TERMINAL
from tests.infra import eventually
from tests.mesh import Mesh

Q, P, PR, C = (
    job_pb2.JOB_STATE_QUEUED,
    job_pb2.JOB_STATE_PROCESSING,
    job_pb2.JOB_STATE_PREVIEW_READY,
    job_pb2.JOB_STATE_COMPLETED,
)


def spec(
    prompt: str = "a red fox in snow",
    task: job_pb2.Task.ValueType = job_pb2.TASK_TEXT_TO_IMAGE,
    **params: object,
) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(task=task, prompt=prompt, parameters=dict_to_struct(params))


async def submit(mesh: Mesh, s: job_pb2.JobSpec) -> job_pb2.Job:
    reply = await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=s))
    return reply.job


def collapse(states: list[int]) -> list[int]:
    """States in order with repeats (progress, several previews) folded."""
    out: list[int] = []
    for s in states:
        if not out or out[-1] != s:
            out.append(s)
    return out


async def test_submit_watch_download(mesh: Mesh) -> None:
    job = await submit(mesh, spec(latency_ms=300, width=128, height=96))
    assert job.state == Q and job.id and job.provider == "sandbox"

    events = await mesh.watch(job.id)

    assert collapse([e.state for e in events]) == [Q, P, PR, C]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    done = events[-1]
    assert len(done.assets) == 1
    asset = done.assets[0]
    data = await mesh.assets.download(asset.id, tenant="default")
    assert hashlib.sha256(data).hexdigest() == asset.sha256
    assert len(data) == asset.size_bytes
    # Byte-identical to the blob storage holds on disk.
    on_disk = [p for p in (mesh.data_dir / "blobs").rglob(asset.sha256)]
    assert on_disk and on_disk[0].read_bytes() == data
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (128, 96)
    assert (asset.width, asset.height) == (128, 96)

    final = (await mesh.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job.id))).job
    assert final.state == C and final.last_sequence == events[-1].sequence
    assert [a.id for a in final.assets] == [asset.id]
    assert final.preview.media_type == "image/png"


async def test_generate_streams_until_done(mesh: Mesh) -> None:
    replies = [
        r async for r in mesh.generate.Generate(generate_service_pb2.GenerateRequest(spec=spec()))
    ]
    assert replies[0].HasField("job")
    states = [r.event.state for r in replies[1:]]
    assert collapse(states) == [Q, P, PR, C]


async def test_reconnect_resumes_after_sequence(mesh: Mesh) -> None:
    job = await submit(mesh, spec(latency_ms=1500, steps=6))
    seen: list[job_pb2.JobEvent] = []
    call = mesh.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job.id))
    async for reply in call:
        if reply.HasField("event"):
            seen.append(reply.event)
            if reply.event.state == PR:
                break
    call.cancel()
    resumed = await mesh.watch(job.id, after=seen[-1].sequence)
    everything = await mesh.watch(job.id)
    assert [e.sequence for e in seen + resumed] == [e.sequence for e in everything]
    assert seen + resumed == everything
    assert resumed[-1].state == C


async def test_watch_finished_job_replays_and_ends(mesh: Mesh) -> None:
    job = await submit(mesh, spec())
    first = await mesh.watch(job.id)
    again = await mesh.watch(job.id)
    assert first == again
    assert await mesh.watch(job.id, after=first[-1].sequence) == []


async def test_watch_after_the_last_sequence_of_a_running_job_ends_with_it(mesh: Mesh) -> None:
    # The job's terminal event comes with a sequence below after_sequence: it is not sent,
    # but the stream still closes when the job ends instead of waiting for ever.
    job = await submit(mesh, spec(latency_ms=3000))
    call = mesh.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job.id, after_sequence=1000), timeout=30
    )
    replies = [reply async for reply in call]
    # The job as the watch began: running. Had it already ended, the stream would close
    # through the path for ended jobs and this test would prove nothing.
    assert [reply.WhichOneof("update") for reply in replies] == ["job"]
    assert replies[0].job.state not in TERMINAL
    assert (await mesh.get_job(job.id)).state == C


async def test_cancel_running_job_stops_provider_call(mesh: Mesh) -> None:
    job = await submit(mesh, spec(latency_ms=60_000, steps=60))
    worker = mesh.workers[0].workers[0]

    async def running() -> bool:
        got = (await mesh.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job.id))).job
        return got.state == P and worker.in_flight == 1

    await eventually(running)
    reply = await mesh.jobs.CancelJob(
        job_service_pb2.CancelJobRequest(job_id=job.id, reason="changed my mind")
    )
    assert reply.job.state == job_pb2.JOB_STATE_CANCELLED
    assert reply.job.error.message == "changed my mind"
    # The provider call stops promptly: the worker holds nothing any more.
    await eventually(lambda: worker.in_flight == 0, within=5)
    events = await mesh.watch(job.id)
    assert events[-1].state == job_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == f"job {job.id} has already ended (cancelled); nothing to cancel"


async def test_cancel_queued_job_is_skipped_by_worker(mesh: Mesh) -> None:
    worker = mesh.workers[0].workers[0]
    worker.stop_fetching()
    await asyncio.sleep(1.2)  # let the fetch loop notice
    job = await submit(mesh, spec())
    await mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id))
    events = await mesh.watch(job.id)
    assert [e.state for e in events] == [Q, job_pb2.JOB_STATE_CANCELLED]


async def test_an_oversize_cancel_reason_is_invalid_and_the_job_runs_on(mesh: Mesh) -> None:
    # 1.2 MB of reason passed NATS's 1 MiB limit on the stop message: the call was INTERNAL
    # and the job was left cancelled anyway.
    job = await submit(mesh, spec(latency_ms=60_000))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job.id, reason="🦊" * 300_000)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1,000" in (err.value.details() or "")
    assert (await mesh.get_job(job.id)).state != job_pb2.JOB_STATE_CANCELLED
    reply = await mesh.jobs.CancelJob(
        job_service_pb2.CancelJobRequest(job_id=job.id, reason="🦊" * 1000)
    )
    assert reply.job.state == job_pb2.JOB_STATE_CANCELLED


@pytest.mark.parametrize("reason", ["nul\x00", "\x1b[2J\x1b[31mowned"], ids=["nul", "escape"])
async def test_a_cancel_reason_with_control_characters_is_invalid(mesh: Mesh, reason: str) -> None:
    # PostgreSQL refuses a NUL in text (the call was INTERNAL there), and an escape sequence
    # would reach every terminal that shows the job's error.
    job = await submit(mesh, spec(latency_ms=60_000))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id, reason=reason))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "control characters" in (err.value.details() or "")
    assert (await mesh.get_job(job.id)).state != job_pb2.JOB_STATE_CANCELLED
    # Lines and tabs are text, not control.
    reply = await mesh.jobs.CancelJob(
        job_service_pb2.CancelJobRequest(job_id=job.id, reason="no longer needed:\n\tsee #42")
    )
    assert reply.job.error.message == "no longer needed:\n\tsee #42"


async def test_failure_is_explained(mesh: Mesh) -> None:
    job = await submit(mesh, spec(fail_rate=1.0, fail_kind="invalid_input"))
    events = await mesh.watch(job.id)
    assert events[-1].state == job_pb2.JOB_STATE_FAILED
    error = events[-1].error
    assert error.kind == job_pb2.ERROR_KIND_INVALID_INPUT and error.code and error.message
    assert error.provider == "sandbox"


async def test_retryable_failure_retries_then_fails(mesh: Mesh) -> None:
    job = await submit(mesh, spec(fail_rate=1.0, fail_kind="retryable"))
    events = await mesh.watch(job.id)
    assert events[-1].state == job_pb2.JOB_STATE_FAILED
    assert events[-1].error.kind == job_pb2.ERROR_KIND_RETRYABLE
    retries = [e for e in events if e.progress.message.startswith("retrying")]
    assert len(retries) >= 1
    # Each new run says its progress starts over, so no watcher shows the last run's 100%.
    restarts = [e for e in events if e.progress.message.startswith("restarted (delivery")]
    assert len(restarts) == len(retries)
    assert all(e.progress.HasField("percent") and e.progress.percent == 0 for e in restarts)
    # The failure says it was retried, which is why it took longer than one attempt.
    assert events[-1].error.message.endswith(f"; gave up after {len(retries) + 1} tries")


async def test_text_task_returns_text(mesh: Mesh) -> None:
    job = await submit(mesh, spec("write a haiku about foxes", task=job_pb2.TASK_TEXT_TO_TEXT))
    events = await mesh.watch(job.id)
    assert events[-1].state == C
    assert events[-1].output_text
    text_asset = events[-1].assets[0]
    assert text_asset.media_type.startswith("text/plain")
    assert (await mesh.assets.download(text_asset.id, tenant="default")).decode() == events[
        -1
    ].output_text


async def test_speech_round_trip_with_input_asset(mesh: Mesh, tmp_path: Path) -> None:
    tts = await submit(mesh, spec("hello from the sandbox", task=job_pb2.TASK_TEXT_TO_SPEECH))
    wav = (await mesh.watch(tts.id))[-1].assets[0]
    assert wav.media_type == "audio/wav" and wav.duration_seconds > 0
    stt_spec = spec("", task=job_pb2.TASK_SPEECH_TO_TEXT)
    stt_spec.input_asset_ids.append(wav.id)
    stt = await submit(mesh, stt_spec)
    done = (await mesh.watch(stt.id))[-1]
    assert done.state == C
    assert "hello from the sandbox" in done.output_text


async def test_idempotency_key(mesh: Mesh) -> None:
    s = spec(latency_ms=0)
    s.idempotency_key = "order-42"
    first = await submit(mesh, s)
    second = await submit(mesh, s)
    assert first.id == second.id
    other = spec("a different prompt")
    other.idempotency_key = "order-42"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(mesh, other)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_idempotent_retry_may_spell_the_defaults_out(mesh: Mesh) -> None:
    terse = job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_TEXT, prompt="hello", idempotency_key="order-43"
    )
    first = await submit(mesh, terse)
    spelled = job_pb2.JobSpec()
    spelled.CopyFrom(terse)
    spelled.priority = job_pb2.PRIORITY_NORMAL
    spelled.parameters.SetInParent()  # present, and empty
    assert spelled.SerializeToString() != terse.SerializeToString()
    assert (await submit(mesh, spelled)).id == first.id


async def test_a_retry_matches_a_job_whose_hash_was_stored_before_the_defaults_were_spelled_out(
    mesh: Mesh,
) -> None:
    spelled = job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_TEXT,
        prompt="hello",
        priority=job_pb2.PRIORITY_NORMAL,
        idempotency_key="order-44",
    )
    first = await submit(mesh, spelled)
    # As an earlier version stored it: the hash of the spec's bytes as sent.
    unkeyed = job_pb2.JobSpec()
    unkeyed.CopyFrom(spelled)
    unkeyed.idempotency_key = ""
    raw = hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest()
    assert mesh.router is not None
    async with mesh.router.store._engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == first.id).values(spec_hash=raw))

    assert (await submit(mesh, spelled)).id == first.id


async def test_list_jobs_pages_and_filters(mesh: Mesh) -> None:
    ids = [(await submit(mesh, spec(f"fox {i}"))).id for i in range(5)]
    text_job = await submit(mesh, spec("hello", task=job_pb2.TASK_TEXT_TO_TEXT))
    for job_id in [*ids, text_job.id]:
        await mesh.watch(job_id)
    seen: list[str] = []
    token = ""
    while True:
        page = await mesh.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(
                page_size=2, page_token=token, task=job_pb2.TASK_TEXT_TO_IMAGE
            )
        )
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert seen == list(reversed(ids))  # newest first
    done = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(states=[C]))
    assert len(done.jobs) == 6
    none = await mesh.jobs.ListJobs(
        job_service_pb2.ListJobsRequest(states=[job_pb2.JOB_STATE_FAILED])
    )
    assert list(none.jobs) == []


async def test_jobs_are_scoped_to_their_tenant(mesh: Mesh) -> None:
    job = await submit(mesh, spec())
    other = (("x-genmesh-tenant", "someone-else"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job.id), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=other)
    assert list(listed.jobs) == []


async def test_progress_after_the_preview_reaches_the_watcher(mesh: Mesh) -> None:
    # The sandbox shows its preview half way, then reports the rest of its steps.
    job = await submit(mesh, spec(latency_ms=400, steps=4, width=32, height=32, preview=True))
    events = await mesh.watch(job.id)
    steps = [(e.state, e.progress.message) for e in events if e.progress.message.startswith("step")]
    assert steps == [
        (P, "step 1/4"),
        (P, "step 2/4"),
        (PR, "step 3/4"),
        (PR, "step 4/4"),
    ]
    assert collapse([e.state for e in events]) == [Q, P, PR, C]
