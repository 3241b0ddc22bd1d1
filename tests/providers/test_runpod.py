"""The RunPod adapter against fake serverless endpoints on loopback, one fake worker each."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import ProviderConfig
from services.providers.runpod import RunPodAdapter
from services.providers.sandbox import media
from tests.fakes.runpod import RunPodFake, WorkerRun
from tests.fakes.server import Injected, serving
from tests.providers.harness import FakeContext, cancel_when, provider_config, run_once

KEY = "rp_secret_0123456789ABCDEF"
MODELS = {
    "image-to-text": "describer",
    "text-to-text": "copywriter",
    "text-to-speech": "voice",
    "text-to-image": "painter",
    "speech-to-text": "scribe",
    "image-to-video": "animator",
}
PHOTO = media.text_to_image("a red bicycle", 2, 120, 80)


def config(
    url: str, key: str = KEY, models: dict[str, str] = MODELS, **options: Any
) -> ProviderConfig:
    return provider_config(
        "runpod", f"{url}/v2", key, models, key_env="RUNPOD_API_KEY", options=options
    )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[RunPodFake, str]]:
    runpod = RunPodFake(KEY)
    async with serving(runpod.app) as url:
        yield runpod, url


@pytest.fixture
async def adapter(fake: tuple[RunPodFake, str]) -> AsyncIterator[RunPodAdapter]:
    async with aclosing(RunPodAdapter(config(fake[1]))) as built:
        yield built


def job(
    task: job_pb2.Task.ValueType, prompt: str = "", inputs: tuple[bytes, ...] = (), **params: Any
) -> FakeContext:
    return FakeContext(task, prompt, params, inputs, provider="runpod")


def sent_input(runpod: RunPodFake) -> dict[str, Any]:
    (run,) = runpod.script.calls("run")
    body: dict[str, Any] = json.loads(run.body)
    return body["input"]


async def test_tasks_follow_the_configured_endpoints_and_check_probes_their_health(
    fake: tuple[RunPodFake, str],
) -> None:
    runpod, url = fake
    async with (
        aclosing(RunPodAdapter(config(url, models={"image-to-text": "describer"}))) as adapter,
        aclosing(RunPodAdapter(config(url, key="rp_wrong_key_42"))) as wrong,
    ):
        assert list(adapter.describe().tasks) == [job_pb2.TASK_IMAGE_TO_TEXT]
        assert await adapter.check() == "" and await adapter.check() == ""
        assert [c.path for c in runpod.script.calls("health")] == ["/v2/describer/health"]
        reason = await wrong.check()
        assert "401" in reason and "rp_wrong_key_42" not in reason


async def test_an_image_describer_gets_the_image_as_base64_and_reports_progress() -> None:
    runpod = RunPodFake(KEY, queue_seconds=0.1, run_seconds=1.5)
    async with serving(runpod.app) as url:
        ctx = FakeContext(
            job_pb2.TASK_IMAGE_TO_TEXT,
            "what is this?",
            {"max_tokens": 64},
            [PHOTO],
            provider="runpod",
            input_media_type="image/png",
        )
        result = await run_once(RunPodAdapter(config(url)), ctx)
    assert result.text == media.image_to_text(PHOTO)
    sent = sent_input(runpod)
    assert sent["task"] == "image-to-text" and sent["prompt"] == "what is this?"
    assert sent["parameters"] == {"max_tokens": 64}
    assert base64.b64decode(sent["image"]) == PHOTO and sent["image_media_type"] == "image/png"
    messages = [m for _, m in ctx.progress_reports]
    assert messages[0] == "queued, waiting for a worker"
    assert "describing" in messages
    (run,) = runpod.script.calls("run")
    assert run.path == "/v2/describer/run" and run.headers["authorization"] == f"Bearer {KEY}"
    assert ctx.request_ids == list(runpod.jobs)


async def test_a_copywriter_generator_streams_its_text() -> None:
    runpod = RunPodFake(KEY, run_seconds=0.3)
    prompt = "copy for a hand-thrown ceramic mug, warm and short"
    async with serving(runpod.app) as url:
        ctx = job(job_pb2.TASK_TEXT_TO_TEXT, prompt)
        result = await run_once(RunPodAdapter(config(url)), ctx)
    assert result.text == media.text_to_text(prompt)
    assert runpod.script.calls("stream")
    assert any(m.startswith("received") for _, m in ctx.progress_reports)


async def test_without_streaming_the_aggregated_output_is_read(
    fake: tuple[RunPodFake, str],
) -> None:
    runpod, url = fake
    adapter = RunPodAdapter(config(url, stream=False))
    prompt = "a tagline for rain boots"
    result = await run_once(adapter, job(job_pb2.TASK_TEXT_TO_TEXT, prompt, max_tokens=3))
    assert result.text == " ".join(media.text_to_text(prompt).split(" ")[:3])
    assert runpod.script.calls("stream") == []


async def test_a_voice_cloning_tts_returns_real_wav(
    fake: tuple[RunPodFake, str], adapter: RunPodAdapter
) -> None:
    ctx = job(job_pb2.TASK_TEXT_TO_SPEECH, "welcome to the shop", voice="warm")
    (output,) = (await adapter.run(ctx)).outputs
    assert output.media_type == "audio/wav" and output.filename == "speech.wav"
    assert media.speech_to_text(output.data) == "welcome to the shop"
    assert sent_input(fake[0])["parameters"] == {"voice": "warm"}


async def test_a_worker_rejecting_its_input_is_invalid_input(adapter: RunPodAdapter) -> None:
    with pytest.raises(InvalidInput, match="this pod knows narrator, warm, bright"):
        await adapter.run(job(job_pb2.TASK_TEXT_TO_SPEECH, "hi", voice="pirate"))
    with pytest.raises(InvalidInput, match="wav only"):
        await adapter.run(job(job_pb2.TASK_TEXT_TO_SPEECH, "hi", format="mp3"))


async def test_parameters_outside_the_contract_never_reach_runpod(
    fake: tuple[RunPodFake, str], adapter: RunPodAdapter
) -> None:
    with pytest.raises(InvalidInput, match=r"format must be .*one of wav, mp3, ogg, flac"):
        await adapter.run(job(job_pb2.TASK_TEXT_TO_SPEECH, "hi", format="aiff"))
    assert fake[0].script.requests == []


async def test_a_painter_reports_steps_and_a_preview_then_returns_base64_png() -> None:
    # The preview shows in the status only while progress is between 50% and 75%: a quarter
    # of the run, which must outlast a busy machine's stall between two polls (a tenth of a
    # second did not, once in a CI run).
    runpod = RunPodFake(KEY, run_seconds=2.0)
    async with serving(runpod.app) as url:
        ctx = job(job_pb2.TASK_TEXT_TO_IMAGE, "a tin robot", width=96, height=64, seed=1)
        result = await run_once(RunPodAdapter(config(url)), ctx)
    (output,) = result.outputs
    assert output.media_type == "image/png" and output.filename == "image.png"
    assert Image.open(io.BytesIO(output.data)).size == (96, 64)
    (preview,) = ctx.previews
    assert Image.open(io.BytesIO(preview.data)).size == (16, 16)
    percents = [p for p, _ in ctx.progress_reports if p is not None]
    assert percents and percents == sorted(percents)


async def test_transcripts_and_url_outputs(
    fake: tuple[RunPodFake, str], adapter: RunPodAdapter
) -> None:
    wav = media.text_to_speech("order number seven", 60)
    transcript = await adapter.run(job(job_pb2.TASK_SPEECH_TO_TEXT, "", (wav,)))
    assert transcript.text == "order number seven"
    assert sent_input(fake[0])["audio_media_type"] == "audio/wav"
    (video,) = (await adapter.run(job(job_pb2.TASK_IMAGE_TO_VIDEO, "pan", (PHOTO,)))).outputs
    assert video.media_type == "image/gif" and video.filename == "video.gif"
    assert getattr(Image.open(io.BytesIO(video.data)), "n_frames", 1) > 1
    assert len(fake[0].script.calls("file")) == 1


async def test_a_crashing_worker_is_fatal_with_its_error() -> None:
    def crashing(job_input: dict[str, Any], put: Callable[[bytes, str, str], str]) -> WorkerRun:
        raise RuntimeError("CUDA error: out of memory")

    runpod = RunPodFake(KEY, workers={"painter": crashing})
    async with serving(runpod.app) as url:
        adapter = RunPodAdapter(config(url, models={"text-to-image": "painter"}))
        with pytest.raises(Fatal, match="CUDA error: out of memory") as caught:
            await run_once(adapter, job(job_pb2.TASK_TEXT_TO_IMAGE, "x"))
    assert caught.value.code == "worker_failed"


async def test_rate_limits_server_errors_and_timeouts_are_retryable(
    fake: tuple[RunPodFake, str], adapter: RunPodAdapter
) -> None:
    runpod, _ = fake
    runpod.script.inject(
        Injected(429, {"error": "rate limited"}, {"Retry-After": "2"}), route="run"
    )
    with pytest.raises(Retryable) as limited:
        await adapter.run(job(job_pb2.TASK_TEXT_TO_IMAGE, "x"))
    assert limited.value.retry_after == 2

    runpod.run_seconds = 1.0
    runpod.script.inject(Injected(500, {"error": "internal error"}), route="status")
    with pytest.raises(Retryable, match="internal error"):
        await adapter.run(job(job_pb2.TASK_TEXT_TO_IMAGE, "x"))

    runpod.script.inject(Injected(200, {"id": "x", "status": "TIMED_OUT"}), route="status")
    with pytest.raises(Retryable, match="ran out of time"):
        await adapter.run(job(job_pb2.TASK_TEXT_TO_IMAGE, "x"))


async def test_a_wrong_key_is_fatal_and_never_echoed(fake: tuple[RunPodFake, str]) -> None:
    wrong = "rp_wrong_key_777777"
    with pytest.raises(Fatal) as caught:
        await run_once(
            RunPodAdapter(config(fake[1], key=wrong)), job(job_pb2.TASK_TEXT_TO_IMAGE, "x")
        )
    assert caught.value.code == "unauthorized" and "RUNPOD_API_KEY" in caught.value.message
    assert wrong not in str(caught.value)


async def test_cancelling_the_job_cancels_it_on_runpod(
    fake: tuple[RunPodFake, str], adapter: RunPodAdapter
) -> None:
    runpod, _ = fake
    runpod.run_seconds = 30
    ctx = job(job_pb2.TASK_TEXT_TO_IMAGE, "a slow painting")
    await cancel_when(adapter.run(ctx), lambda: ctx.request_ids, 5.0)
    jid = ctx.request_ids[0]
    assert runpod.cancelled == [jid]
    (cancel,) = runpod.script.calls("cancel")
    assert cancel.method == "POST" and cancel.path == f"/v2/painter/cancel/{jid}"


async def test_a_redelivered_job_resumes_without_a_second_run(
    fake: tuple[RunPodFake, str], adapter: RunPodAdapter
) -> None:
    runpod, url = fake
    jid = runpod.submit("voice", {"prompt": "resumed speech", "parameters": {}}, url)
    ctx = FakeContext(
        job_pb2.TASK_TEXT_TO_SPEECH, "resumed speech", provider="runpod", previous_request_id=jid
    )
    (output,) = (await adapter.run(ctx)).outputs
    assert media.speech_to_text(output.data) == "resumed speech"
    assert runpod.script.calls("run") == [] and ctx.request_ids == []


async def test_a_failed_or_forgotten_job_runs_anew(
    fake: tuple[RunPodFake, str], adapter: RunPodAdapter
) -> None:
    runpod, url = fake
    failed = runpod.submit("voice", {"prompt": "x", "parameters": {"voice": "pirate"}}, url)
    for previous in (failed, "forgotten-job"):
        ctx = FakeContext(
            job_pb2.TASK_TEXT_TO_SPEECH, "fresh", provider="runpod", previous_request_id=previous
        )
        (output,) = (await adapter.run(ctx)).outputs
        assert media.speech_to_text(output.data) == "fresh"
    assert len(runpod.script.calls("run")) == 2


async def test_a_slow_endpoint_is_retryable(fake: tuple[RunPodFake, str]) -> None:
    runpod, url = fake
    runpod.script.inject(Injected(200, {"id": "late", "status": "IN_QUEUE"}, delay=1.0))
    adapter = RunPodAdapter(replace(config(url), timeout=0.2))
    with pytest.raises(Retryable, match="did not answer in time"):
        await run_once(adapter, job(job_pb2.TASK_TEXT_TO_IMAGE, "x"))
