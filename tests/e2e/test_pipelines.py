"""Multi-step pipelines on the whole mesh: every built-in end to end with the sandbox, failures,
invalid specs, cancellation and a router restart mid-pipeline."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image
from sqlalchemy import update

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2
from services.common.parameters import dict_to_struct
from services.providers.sandbox import media
from services.router import limits
from services.router.store import jobs
from tests.conftest import Database
from tests.e2e.test_admission import busy_sandbox, image, release
from tests.e2e.test_job_flow import submit
from tests.infra import eventually
from tests.mesh import Mesh, running_mesh

Q, P, PR, C, F, X = (
    job_pb2.JOB_STATE_QUEUED,
    job_pb2.JOB_STATE_PROCESSING,
    job_pb2.JOB_STATE_PREVIEW_READY,
    job_pb2.JOB_STATE_COMPLETED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
)
TENANT = "default"


def step(
    name: str,
    task: job_pb2.Task.ValueType,
    prompt: str = "",
    inputs: tuple[str, ...] = (),
    provider: str = "",
    **params: Any,
):
    return job_pb2.PipelineStep(
        name=name,
        task=task,
        prompt=prompt,
        inputs=inputs,
        provider=provider,
        parameters=dict_to_struct(params),
    )


def pipeline_spec(
    name: str = "", steps: tuple[job_pb2.PipelineStep, ...] = (), prompt: str = "", **kw: Any
) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        prompt=prompt, pipeline=job_pb2.PipelineSpec(name=name, steps=steps), **kw
    )


def steps_seen(events: list[job_pb2.JobEvent]) -> list[str]:
    """The steps the events name, in order, each run of one step once."""
    out: list[str] = []
    for event in events:
        if event.step and (not out or out[-1] != event.step):
            out.append(event.step)
    return out


async def check_children(mesh: Mesh, job: job_pb2.Job) -> None:
    """Each step ran as one job of its own that names the pipeline and the step."""
    for status in job.pipeline.steps:
        child = await mesh.get_job(status.job_id)
        assert (child.parent_job_id, child.pipeline_step) == (job.id, status.name)
        assert child.state == status.state
        assert [a.id for a in child.assets] == [a.id for a in status.assets]


async def upload_png(mesh: Mesh) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 30)).save(buffer, "PNG")
    asset = await mesh.assets.upload(buffer.getvalue(), tenant=TENANT, media_type="image/png")
    return asset.id


async def test_speech_to_image_end_to_end(mesh: Mesh) -> None:
    said = "a lighthouse on a cliff at dawn"
    wav = media.text_to_speech(said, 60)
    audio = await mesh.assets.upload(wav, tenant=TENANT, media_type="audio/wav")

    spec = pipeline_spec("speech-to-image", input_asset_ids=[audio.id])
    replies = [
        r async for r in mesh.generate.Generate(generate_service_pb2.GenerateRequest(spec=spec))
    ]

    first = replies[0].job
    assert first.state == Q and first.pipeline.name == "speech-to-image"
    assert [(s.name, s.state) for s in first.pipeline.steps] == [
        ("transcribe", Q),
        ("enhance", Q),
        ("image", Q),
    ]
    events = [r.event for r in replies[1:]]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert steps_seen(events) == ["transcribe", "enhance", "image"]
    assert all(e.step_job_id for e in events if e.step)
    assert events[-1].state == C and events[-1].step == "image"
    assert [a.media_type for a in events[-1].assets] == ["image/png"]

    job = await mesh.get_job(first.id)
    assert job.state == C and [s.state for s in job.pipeline.steps] == [C, C, C]
    transcribe, enhance, image = job.pipeline.steps
    assert transcribe.output_text == said
    assert said in enhance.output_text  # the sandbox echoes its prompt, transcript included
    assert [a.id for a in job.assets] == [a.id for a in image.assets]
    await check_children(mesh, job)
    image_job = await mesh.get_job(image.job_id)
    assert image_job.HasField("prompt_enhancement")  # the image step asked for hints
    assert image_job.prompt_enhancement.original_prompt == enhance.output_text
    png = await mesh.assets.download(image.assets[0].id, tenant=TENANT)
    assert Image.open(io.BytesIO(png)).format == "PNG"


async def test_image_to_product_copy_is_json_with_four_keys(mesh: Mesh) -> None:
    photo = await upload_png(mesh)
    job = await submit(mesh, pipeline_spec("image-to-product-copy", input_asset_ids=[photo]))

    events = await mesh.watch(job.id)

    assert steps_seen(events) == ["describe", "copy"]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].state == C
    copy = json.loads(events[-1].output_text)
    assert set(copy) == {"title", "description", "keywords", "categories"}
    assert copy["keywords"] and isinstance(copy["keywords"], list)
    done = await mesh.get_job(job.id)
    describe = done.pipeline.steps[0]
    assert "96x64" in describe.output_text and "red" in describe.output_text
    assert describe.output_text in copy["description"]
    await check_children(mesh, done)


async def test_text_to_video_yields_a_video(mesh: Mesh) -> None:
    job = await submit(mesh, pipeline_spec("text-to-video", prompt="a paper boat on a pond"))

    events = await mesh.watch(job.id)

    assert steps_seen(events) == ["image", "video"]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    previews = [e for e in events if e.HasField("preview")]
    assert {e.step for e in previews} == {"image", "video"}
    assert all(e.state == PR and e.preview.media_type == "image/png" for e in previews)
    # A step's report without words of its own shows its state as words.
    assert "image: preview ready" in [e.progress.message for e in previews]
    final = events[-1]
    assert final.state == C and [a.media_type for a in final.assets] == ["image/gif"]
    gif = Image.open(io.BytesIO(await mesh.assets.download(final.assets[0].id, tenant=TENANT)))
    assert gif.format == "GIF" and getattr(gif, "n_frames", 1) > 1
    done = await mesh.get_job(job.id)
    image, video = done.pipeline.steps
    assert [a.media_type for a in image.assets] == ["image/png"]
    assert (await mesh.get_job(video.job_id)).spec.input_asset_ids == [image.assets[0].id]
    await check_children(mesh, done)


async def test_failing_step_fails_the_job_and_keeps_earlier_assets(mesh: Mesh) -> None:
    steps = (
        step("picture", job_pb2.TASK_TEXT_TO_IMAGE, "{prompt}", width=64, height=64),
        step(
            "animate",
            job_pb2.TASK_IMAGE_TO_VIDEO,
            "{prompt}",
            inputs=("picture",),
            fail_rate=1.0,
            fail_kind="invalid_input",
        ),
        step("caption", job_pb2.TASK_TEXT_TO_TEXT, "caption: {prompt}"),
    )
    job = await submit(mesh, pipeline_spec(steps=steps, prompt="a kite"))

    events = await mesh.watch(job.id)

    assert steps_seen(events) == ["picture", "animate"]  # caption never starts
    final = events[-1]
    assert final.state == F and final.step == "animate"
    assert "step 'animate'" in final.error.message and "injected" in final.error.message
    assert final.error.kind == job_pb2.ERROR_KIND_INVALID_INPUT
    done = await mesh.get_job(job.id)
    picture, animate, caption = done.pipeline.steps
    assert (picture.state, animate.state, caption.state) == (C, F, X)
    assert not caption.job_id and "injected" in animate.error.message
    kept = await mesh.assets.get(picture.assets[0].id, tenant=TENANT)
    assert kept.media_type == "image/png"
    data = await mesh.assets.download(kept.id, tenant=TENANT)
    assert len(data) == kept.size_bytes


async def test_the_pipeline_timeout_bounds_the_pipeline_and_its_steps(mesh: Mesh) -> None:
    steps = (
        step("picture", job_pb2.TASK_TEXT_TO_IMAGE, "{prompt}", latency_ms=60_000, steps=0),
        step("animate", job_pb2.TASK_IMAGE_TO_VIDEO, "{prompt}", inputs=("picture",)),
    )
    spec = pipeline_spec(steps=steps, prompt="a kite", draft_first=True)
    spec.timeout.FromMilliseconds(1500)
    spec.hedge_after.FromSeconds(30)
    job = await submit(mesh, spec)
    assert job.HasField("deadline")

    events = await mesh.watch(job.id)

    final = events[-1]
    assert final.state == F and final.error.code == "deadline_exceeded", final
    done = await mesh.get_job(job.id)
    picture = await mesh.get_job(done.pipeline.steps[0].job_id)
    # The step carries the pipeline's budgets, so it cannot run on past them for long.
    assert picture.spec.timeout.ToMilliseconds() == 1500
    assert picture.spec.hedge_after.ToSeconds() == 30
    assert picture.spec.draft_first
    await eventually(lambda: _ended(mesh, picture.id), within=15.0)
    assert not done.pipeline.steps[1].job_id  # never started


def terse_pipeline(key: str) -> job_pb2.JobSpec:
    """A pipeline spec leaving every default unsaid: no priority, no step parameters."""
    words = job_pb2.PipelineStep(name="words", task=job_pb2.TASK_TEXT_TO_TEXT, prompt="{prompt}")
    return pipeline_spec(steps=(words,), prompt="hello", idempotency_key=key)


def spelled_out(spec: job_pb2.JobSpec) -> job_pb2.JobSpec:
    """The same request with the defaults written: priority NORMAL, empty step parameters."""
    spelled = job_pb2.JobSpec()
    spelled.CopyFrom(spec)
    spelled.priority = job_pb2.PRIORITY_NORMAL
    spelled.pipeline.steps[0].parameters.SetInParent()  # present, and empty
    assert spelled.SerializeToString() != spec.SerializeToString()
    return spelled


async def test_an_idempotent_pipeline_retry_may_spell_the_defaults_out(mesh: Mesh) -> None:
    terse = terse_pipeline("pipe-1")
    first = await submit(mesh, terse)
    assert (await submit(mesh, spelled_out(terse))).id == first.id
    spelled = spelled_out(terse_pipeline("pipe-2"))
    first = await submit(mesh, spelled)
    assert (await submit(mesh, terse_pipeline("pipe-2"))).id == first.id
    # Another request under a used key is still refused.
    other = terse_pipeline("pipe-2")
    other.prompt = "goodbye"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(mesh, other)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_pipeline_retry_matches_a_hash_stored_before_steps_were_normalised(
    mesh: Mesh,
) -> None:
    spelled = spelled_out(terse_pipeline("pipe-3"))
    first = await submit(mesh, spelled)
    # As an earlier version stored it: only the job's own defaults spelled one way.
    unkeyed = job_pb2.JobSpec()
    unkeyed.CopyFrom(spelled)
    unkeyed.idempotency_key = ""
    unkeyed.priority = job_pb2.PRIORITY_UNSPECIFIED
    old = hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest()
    assert mesh.router is not None
    async with mesh.router.store._engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == first.id).values(spec_hash=old))

    assert (await submit(mesh, spelled)).id == first.id
    assert (await submit(mesh, terse_pipeline("pipe-3"))).id == first.id


async def _ended(mesh: Mesh, job_id: str) -> bool:
    return (await mesh.get_job(job_id)).state in (F, X)


INVALID: list[tuple[job_pb2.JobSpec, str]] = [
    (pipeline_spec("speech-to-song"), "unknown pipeline 'speech-to-song'"),
    (
        pipeline_spec(
            steps=(
                step("a", job_pb2.TASK_TEXT_TO_TEXT, "x"),
                step("a", job_pb2.TASK_TEXT_TO_TEXT, "y"),
            )
        ),
        "pipeline step 2 ('a'): another step already has this name",
    ),
    (
        pipeline_spec(
            steps=(
                step("clip", job_pb2.TASK_IMAGE_TO_VIDEO, "move", inputs=("still",)),
                step("still", job_pb2.TASK_TEXT_TO_IMAGE, "a cat"),
            )
        ),
        "step 'still', which does not come before it",
    ),
    (
        pipeline_spec(
            steps=(
                step("first", job_pb2.TASK_TEXT_TO_TEXT, "about {second}"),
                step("second", job_pb2.TASK_TEXT_TO_TEXT, "x"),
            )
        ),
        "pipeline step 'first' uses step 'second', which does not come before it",
    ),
    (
        pipeline_spec(steps=(step("img", job_pb2.TASK_IMAGE_TO_TEXT, inputs=("nope",)),)),
        "unknown step 'nope'",
    ),
    (pipeline_spec(steps=(step("blank", job_pb2.TASK_UNSPECIFIED, "x"),)), "('blank'): task"),
    (pipeline_spec("image-to-product-copy"), "('describe') reads the pipeline's input asset"),
    (pipeline_spec("text-to-video"), "pipeline step 'image': prompt is empty"),
    (
        pipeline_spec("text-to-video", prompt="x", task=job_pb2.TASK_TEXT_TO_IMAGE),
        "leave task unspecified",
    ),
    (
        pipeline_spec(
            steps=(
                step("words", job_pb2.TASK_TEXT_TO_TEXT, "x"),
                step("look", job_pb2.TASK_IMAGE_TO_TEXT, inputs=("words",)),
            )
        ),
        "image-to-text takes image/*, but step 'words' (text-to-text) makes text/*",
    ),
    (
        # A NaN once made the step's driver fail and resume forever, the job QUEUED for good.
        pipeline_spec(steps=(step("caption", job_pb2.TASK_TEXT_TO_TEXT, "x", seed=math.nan),)),
        "pipeline step 1 ('caption'): parameters must be JSON",
    ),
]


async def test_invalid_specs_are_rejected_and_nothing_is_written(mesh: Mesh) -> None:
    for spec, message in INVALID:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit(mesh, spec)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or ""), caught.value.details()
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert not listed.jobs


async def test_a_pipeline_takes_one_input_asset_as_a_job_does(mesh: Mesh) -> None:
    # Steps read only the first: the second was never checked (it names no asset) and the
    # call was accepted.
    photo = await upload_png(mesh)
    spec = pipeline_spec("image-to-product-copy", input_asset_ids=[photo, "a_doesnotexist"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(mesh, spec)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "a pipeline takes exactly one input asset, not 2"
    assert not (await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs


async def test_a_placeholder_naming_no_step_is_refused_and_other_braces_stay(
    mesh: Mesh,
) -> None:
    refused = pipeline_spec(
        steps=(
            step("a", job_pb2.TASK_TEXT_TO_TEXT, "{prompt}"),
            step("b", job_pb2.TASK_TEXT_TO_TEXT, "{a} and {nope}"),
        ),
        prompt="x",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(mesh, refused)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pipeline step 'b' uses {nope}" in (caught.value.details() or "")
    assert not (await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs

    # Braces around anything but a lowercase name are no placeholder: they reach the provider.
    literal = '{prompt}: {"k": 1} {Nope} {two words}'
    job = await submit(
        mesh, pipeline_spec(steps=(step("a", job_pb2.TASK_TEXT_TO_TEXT, literal),), prompt="x")
    )
    events = await mesh.watch(job.id)
    assert events[-1].state == C
    assert '{"k": 1} {Nope} {two words}' in events[-1].output_text


async def test_steps_no_provider_can_run_are_rejected_and_nothing_is_written(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    catalog = """
[[providers]]
name = "sandbox"
family = "sandbox"

[[providers]]
name = "pillow"
family = "pillow"
"""
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        catalog=catalog,
        providers=("sandbox", "pillow"),
    ) as mesh:
        photo = await upload_png(mesh)
        words = step("words", job_pb2.TASK_TEXT_TO_TEXT, "{prompt}")
        image = job_pb2.TASK_TEXT_TO_IMAGE
        cases = [
            (
                (step("a", image, "{prompt}", provider="pillow"),),
                "pipeline step 1 ('a'): provider 'pillow' does not serve text-to-image",
            ),
            (
                (words, step("b", image, "{words}", provider="nosuch")),
                "pipeline step 2 ('b'): unknown provider 'nosuch'",
            ),
            (
                (words, step("b", image, "{words}", provider="sandbox", width=99999)),
                "pipeline step 2 ('b'): parameter 'width' is 99999",
            ),
            (
                # No provider named: pillow does not serve the task, sandbox refuses the width.
                (step("a", image, "{prompt}", width=99999),),
                "pipeline step 1 ('a'): parameter 'width' is 99999",
            ),
        ]
        for steps, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await submit(mesh, pipeline_spec(steps=steps, prompt="a kite"))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (caught.value.details() or ""), caught.value.details()

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit(mesh, pipeline_spec("speech-to-image", input_asset_ids=[photo]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(
            f"pipeline step 1 ('transcribe'): input asset '{photo}' is image/png"
        ), caught.value.details()

        assert not (await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs


async def test_cancel_mid_pipeline_cancels_the_running_step(mesh: Mesh) -> None:
    steps = (
        step("picture", job_pb2.TASK_TEXT_TO_IMAGE, "{prompt}", width=32, height=32),
        step(
            "animate",
            job_pb2.TASK_IMAGE_TO_VIDEO,
            "{prompt}",
            inputs=("picture",),
            latency_ms=60_000,
        ),
        step("caption", job_pb2.TASK_TEXT_TO_TEXT, "caption: {prompt}"),
    )
    job = await submit(mesh, pipeline_spec(steps=steps, prompt="a heron"))
    watching = asyncio.create_task(mesh.watch(job.id))

    async def animating() -> job_pb2.Job | None:
        now = await mesh.get_job(job.id)
        return now if now.pipeline.steps[1].state == P else None

    running = await eventually(animating, within=30)
    # As long as a reason may be: the step's own reason adds a prefix to it, which must not
    # push it over the limit and leave the step running (it once did).
    reason = "changed my mind " * 62 + "for good"
    assert len(reason) == limits.MAX_REASON
    cancelled = await mesh.jobs.CancelJob(
        job_service_pb2.CancelJobRequest(job_id=job.id, reason=reason)
    )

    assert cancelled.job.state == X
    events = await asyncio.wait_for(watching, 30)
    assert events[-1].state == X and [e.state for e in events].count(X) == 1
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    child_id = running.pipeline.steps[1].job_id

    async def child_cancelled() -> bool:
        return (await mesh.get_job(child_id)).state == X

    await eventually(child_cancelled, within=15)
    done = await mesh.get_job(job.id)
    # The step that never started will not start either.
    assert [s.state for s in done.pipeline.steps] == [C, X, X]
    assert done.pipeline.steps[0].assets
    assert not done.pipeline.steps[2].job_id


async def test_a_step_whose_provider_queue_is_full_waits_for_room(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with busy_sandbox(nats_url, nats_prefix, database, tmp_path, 1) as (mesh, filler):
        waiting = await submit(mesh, image())
        steps = (step("caption", job_pb2.TASK_TEXT_TO_TEXT, "caption: {prompt}"),)
        job = await submit(mesh, pipeline_spec(steps=steps, prompt="a heron"))
        watching = asyncio.create_task(mesh.watch(job.id))

        async def told_to_wait() -> bool:
            return "waiting for room" in (await mesh.get_job(job.id)).progress.message

        await eventually(told_to_wait, within=15)
        # Room at last: the step starts, rather than the pipeline having failed at once.
        await release(mesh, [waiting, filler])
        events = await asyncio.wait_for(watching, 60)
    assert events[-1].state == C, events[-1]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_router_restart_mid_pipeline_still_completes(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        router_in_process=False,
        router_overrides={"GENMESH_PIPELINE_LEASE": "1"},
    ) as mesh:
        steps = (
            step("picture", job_pb2.TASK_TEXT_TO_IMAGE, "{prompt}", latency_ms=1500),
            step(
                "animate",
                job_pb2.TASK_IMAGE_TO_VIDEO,
                "{prompt}",
                inputs=("picture",),
                latency_ms=1500,
            ),
        )
        job = await submit(mesh, pipeline_spec(steps=steps, prompt="a lantern"))

        async def picturing() -> bool:
            return (await mesh.get_job(job.id)).pipeline.steps[0].state in (P, PR)

        await eventually(picturing, within=30)
        await mesh.restart_router(signal.SIGKILL)

        events = await asyncio.wait_for(mesh.watch(job.id), 60)

        assert events[-1].state == C and [a.media_type for a in events[-1].assets] == ["image/gif"]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert steps_seen(events) == ["picture", "animate"]
        done = await mesh.get_job(job.id)
        assert [s.state for s in done.pipeline.steps] == [C, C]
        # Each step ran once: the resumed runner found the step's job by its key.
        listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())
        children = [j for j in listed.jobs if j.parent_job_id == job.id]
        assert sorted(j.pipeline_step for j in children) == ["animate", "picture"]
        await check_children(mesh, done)
