"""An external provider through the whole mesh: a catalog file declares an openai_compatible
instance pointing at the fake OpenAI API; jobs go router -> NATS -> worker -> fake -> storage.
An answer with nothing in it fails at once as "empty_output" (fatal: neither asked again nor
sent to another provider), never completes; one whose token limit ran out before any text
fails as the caller's "no_text"."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from genmesh.v1 import generate_service_pb2, job_pb2, provider_service_pb2
from services.common.parameters import dict_to_struct
from tests.conftest import Database
from tests.e2e.test_pipelines import pipeline_spec, step, upload_png
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import Injected, serving
from tests.mesh import Mesh, running_mesh

KEY = "sk-e2e-fake-openai-5f1c9d"
PROVIDER = "openai-fake"
# A second instance a job that only prefers PROVIDER may fall back to.
BACKUP = "sandbox-backup"


@dataclass
class World:
    mesh: Mesh
    fake: FakeOpenAI
    url: str


@pytest.fixture
async def world(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> AsyncIterator[World]:
    fake = FakeOpenAI(api_key=KEY, token_delay=0.05)
    async with serving(fake.app()) as url:
        catalog = f"""
[[providers]]
name = "{PROVIDER}"
family = "openai_compatible"
base_url = "{url}/v1"
api_key_env = "FAKE_OPENAI_KEY"
models."text-to-text" = "gpt-4o-mini"
models."text-to-image" = "dall-e-2"
models."image-to-text" = "gpt-4o-mini"
cost = {{ "text-to-image" = 0.02, default = 0.001 }}
options = {{ progress_interval = 0.05 }}
max_retries = 1

[[providers]]
name = "{BACKUP}"
family = "sandbox"
"""
        async with running_mesh(
            nats_url=nats_url,
            prefix=nats_prefix,
            database=database,
            data_dir=tmp_path,
            worker_overrides={"FAKE_OPENAI_KEY": KEY},
            catalog=catalog,
            providers=(PROVIDER, BACKUP),
        ) as mesh:
            yield World(mesh, fake, url)


async def submit(
    mesh: Mesh,
    task: int,
    prompt: str,
    preference: int = job_pb2.PROVIDER_PREFERENCE_STRICT,
    **params: object,
) -> job_pb2.Job:
    spec = job_pb2.JobSpec(
        task=task,  # type: ignore[arg-type]
        prompt=prompt,
        provider=PROVIDER,
        provider_preference=preference,  # type: ignore[arg-type]
        parameters=dict_to_struct(params),
    )
    return (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))).job


async def test_text_to_image_completes_with_the_providers_png(world: World) -> None:
    mesh = world.mesh
    job = await submit(mesh, job_pb2.TASK_TEXT_TO_IMAGE, "a red fox in snow", size="256x256")
    assert job.provider == PROVIDER

    events = await mesh.watch(job.id)

    done = events[-1]
    assert done.state == job_pb2.JOB_STATE_COMPLETED, done.error
    assert [a.media_type for a in done.assets] == ["image/png"]
    asset = done.assets[0]
    data = await mesh.assets.download(asset.id, tenant="default")
    # Byte for byte what the provider produced: stored in the mesh, not a provider URL.
    assert data == world.fake.produced[0]
    assert Image.open(io.BytesIO(data)).size == (256, 256)
    assert (asset.width, asset.height) == (256, 256)
    generations = [r for r in world.fake.faults.requests if r.path == "/v1/images/generations"]
    assert len(generations) == 1
    assert generations[0].headers["authorization"] == f"Bearer {KEY}"


async def test_text_to_text_streams_tokens_as_progress(world: World) -> None:
    mesh = world.mesh
    prompt = "name five animals that live in the arctic tundra and eat fish"
    job = await submit(mesh, job_pb2.TASK_TEXT_TO_TEXT, prompt, temperature=0.5)

    events = await mesh.watch(job.id)

    done = events[-1]
    assert done.state == job_pb2.JOB_STATE_COMPLETED, done.error
    assert done.output_text == f"You said: {prompt}"
    streamed = [
        e.progress.message
        for e in events
        if e.state == job_pb2.JOB_STATE_PROCESSING
        and e.progress.message
        and done.output_text.startswith(e.progress.message)
    ]
    # Several partial texts, each longer than the one before, arrived before completion.
    assert len(streamed) >= 2
    assert streamed == sorted(streamed, key=len) and len(set(streamed)) == len(streamed)
    text = await mesh.assets.download(done.assets[0].id, tenant="default")
    assert text.decode() == done.output_text


async def test_list_providers_shows_the_instance_without_its_key(world: World) -> None:
    reply = await world.mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
    entry = next(p for p in reply.providers if p.name == PROVIDER)
    assert entry.family == "openai_compatible"
    assert set(entry.tasks) == {
        job_pb2.TASK_TEXT_TO_TEXT,
        job_pb2.TASK_TEXT_TO_IMAGE,
        job_pb2.TASK_IMAGE_TO_TEXT,
    }
    assert entry.health.status == provider_service_pb2.PROVIDER_STATUS_AVAILABLE
    assert entry.cost_per_job_usd == pytest.approx(0.02)
    assert {"size", "temperature"} <= {p.name for p in entry.parameters}
    assert "voice" not in {p.name for p in entry.parameters}
    assert KEY.encode() not in reply.SerializeToString()


async def test_a_provider_answering_5xx_is_retried_then_the_job_falls_back(world: World) -> None:
    mesh = world.mesh
    await mesh.wait_for_provider(BACKUP)
    unavailable = Injected(503, {"error": {"message": "The engine is currently overloaded"}})
    world.fake.faults.inject(unavailable, unavailable)
    job = await submit(
        mesh, job_pb2.TASK_TEXT_TO_IMAGE, "a lighthouse", job_pb2.PROVIDER_PREFERENCE_SOFT
    )

    events = await mesh.watch(job.id)

    done = events[-1]
    assert done.state == job_pb2.JOB_STATE_COMPLETED, done.error
    assert done.provider == BACKUP
    notes = [e.progress.message for e in events]
    assert any(n.startswith("retrying in") and "HTTP 503" in n for n in notes), notes
    assert any(n.startswith(f"falling back from {PROVIDER} to {BACKUP}") for n in notes), notes
    # Its one retry spent, the instance was asked twice and never a third time.
    generations = [r for r in world.fake.faults.requests if r.path == "/v1/images/generations"]
    assert len(generations) == 2
    final = await mesh.get_job(job.id)
    first, second = final.attempts
    assert (first.provider, first.outcome) == (PROVIDER, job_pb2.ATTEMPT_OUTCOME_FAILED)
    assert first.error.code == "provider_unavailable"
    assert first.error.kind == job_pb2.ERROR_KIND_RETRYABLE
    assert "overloaded" in first.error.message and KEY not in first.error.message
    assert (second.provider, second.outcome) == (BACKUP, job_pb2.ATTEMPT_OUTCOME_SUCCEEDED)


def answer_blank(world: World) -> None:
    """Have the fake's every chat answer be blank: whitespace is nothing to show either."""
    world.fake.reply = lambda _prompt: " \n "


def chat_calls(world: World) -> int:
    return sum(r.path == "/v1/chat/completions" for r in world.fake.faults.requests)


async def test_an_empty_completion_fails_at_once_with_empty_output(world: World) -> None:
    answer_blank(world)
    job = await submit(world.mesh, job_pb2.TASK_TEXT_TO_TEXT, "say hi")
    job, events = await world.mesh.finished(job.id)

    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert (job.error.code, job.error.kind) == ("empty_output", job_pb2.ERROR_KIND_FATAL)
    assert job.error.provider == PROVIDER
    assert job.error.message == f"{PROVIDER} returned no text for text-to-text"
    assert not job.assets and not job.output_text
    # Asked once: another try would bill another generation for a likely empty answer.
    assert chat_calls(world) == 1
    assert not any(e.progress.message.startswith("retrying in") for e in events)
    assert [a.provider for a in job.attempts] == [PROVIDER]
    assert events[-1].error.code == "empty_output"
    # The provider's failure: it counts against the instance's health.
    assert world.mesh.provider_worker(PROVIDER).recent_error_rate == 1.0


async def test_an_empty_description_is_not_sent_to_another_provider(world: World) -> None:
    answer_blank(world)
    await world.mesh.wait_for_provider(BACKUP)
    spec = job_pb2.JobSpec(
        task=job_pb2.TASK_IMAGE_TO_TEXT,
        provider=PROVIDER,
        provider_preference=job_pb2.PROVIDER_PREFERENCE_SOFT,
        input_asset_ids=[await upload_png(world.mesh)],
    )
    reply = await world.mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))
    job, _ = await world.mesh.finished(reply.job.id)

    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert (job.error.code, job.error.kind) == ("empty_output", job_pb2.ERROR_KIND_FATAL)
    assert job.error.message == f"{PROVIDER} returned no text for image-to-text"
    (only,) = job.attempts
    assert (only.provider, only.outcome) == (PROVIDER, job_pb2.ATTEMPT_OUTCOME_FAILED)
    assert chat_calls(world) == 1


async def test_a_token_limit_spent_thinking_is_the_callers_no_text(world: World) -> None:
    # A reasoning model spends its hidden tokens first; max_tokens=16 leaves none for text.
    world.fake.reasoning_tokens = 64
    await world.mesh.wait_for_provider(BACKUP)
    job = await submit(
        world.mesh,
        job_pb2.TASK_TEXT_TO_TEXT,
        "say hi",
        job_pb2.PROVIDER_PREFERENCE_SOFT,
        max_tokens=16,
    )
    job, _ = await world.mesh.finished(job.id)

    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert (job.error.code, job.error.kind) == ("no_text", job_pb2.ERROR_KIND_INVALID_INPUT)
    assert job.error.message == (
        f"{PROVIDER} used up max_tokens (16) before writing any text (reasoning models spend "
        "tokens thinking first): raise max_tokens"
    )
    # The caller's setting: asked once, sent nowhere else, and not held against the provider.
    assert chat_calls(world) == 1
    assert [a.provider for a in job.attempts] == [PROVIDER]
    worker = world.mesh.provider_worker(PROVIDER)
    assert (worker.recent_calls, worker.recent_error_rate) == (1, 0.0)


async def test_an_image_file_with_no_bytes_is_empty_output_not_storages_fault(
    world: World,
) -> None:
    await world.mesh.wait_for_provider(PROVIDER)
    # The provider answers with a URL whose file turns out to hold nothing.
    answer = {"created": 1_700_000_000, "data": [{"url": f"{world.url}/files/empty.png"}]}
    world.fake.faults.inject(
        Injected(200, answer), Injected(200, b"", {"content-type": "image/png"})
    )
    job = await submit(world.mesh, job_pb2.TASK_TEXT_TO_IMAGE, "a fox", size="256x256")
    job, _ = await world.mesh.finished(job.id)

    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert (job.error.code, job.error.kind) == ("empty_output", job_pb2.ERROR_KIND_FATAL)
    assert job.error.message == (
        f"{PROVIDER} returned an empty file (image-1.png) for text-to-image"
    )
    assert not job.assets
    paths = [r.path for r in world.fake.faults.requests if r.path != "/v1/models"]
    assert paths == ["/v1/images/generations", "/files/empty.png"]


async def test_a_pipeline_stops_at_the_step_that_answered_nothing(world: World) -> None:
    answer_blank(world)
    steps = (
        step("write", job_pb2.TASK_TEXT_TO_TEXT, "a haiku", provider=PROVIDER),
        step("draw", job_pb2.TASK_TEXT_TO_IMAGE, "{write}", provider=BACKUP),
    )
    spec = pipeline_spec(steps=steps)
    reply = await world.mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))
    job, _ = await world.mesh.finished(reply.job.id)

    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert job.error.code == "empty_output"
    assert job.error.message.startswith(
        f"step 'write' (text-to-text) failed: {PROVIDER} returned no text for text-to-text"
    )
    write, draw = job.pipeline.steps
    assert write.state == job_pb2.JOB_STATE_FAILED and write.error.code == "empty_output"
    assert draw.state == job_pb2.JOB_STATE_CANCELLED and not draw.job_id
