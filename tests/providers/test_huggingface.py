"""The Hugging Face adapter against a fake Inference API on loopback (real HTTP, real PNG and
WAV bytes)."""

from __future__ import annotations

import io
import json
import wave
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import DEFAULT_CATALOG, load_catalog
from services.providers.huggingface import HuggingFaceAdapter
from tests.fakes.comfyui import render
from tests.fakes.huggingface import BAD_AUDIO, MODELS, TOKEN, FakeHuggingFace, tone
from tests.fakes.server import Injected, serving
from tests.providers.harness import FakeContext, cancel_when, provider_config

T2I, STT, TTS = job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_SPEECH_TO_TEXT, job_pb2.TASK_TEXT_TO_SPEECH
FLUX, WHISPER, MMS = list(MODELS)


@pytest.fixture
async def hf() -> AsyncIterator[tuple[FakeHuggingFace, str]]:
    fake = FakeHuggingFace()
    async with serving(fake.app) as url:
        yield fake, url


def adapter(url: str, key: str = TOKEN, **overrides: Any) -> aclosing[HuggingFaceAdapter]:
    models = load_catalog(DEFAULT_CATALOG, {})["huggingface"].models
    config = provider_config("huggingface", url, key, models, key_env="HF_TOKEN")
    return aclosing(HuggingFaceAdapter(replace(config, **overrides)))


def wav_info(data: bytes) -> tuple[int, float]:
    with wave.open(io.BytesIO(data)) as audio:
        return audio.getframerate(), audio.getnframes() / audio.getframerate()


async def test_the_shipped_catalog_serves_three_tasks() -> None:
    async with adapter("http://127.0.0.1:9") as instance:
        assert sorted(instance.describe().tasks) == sorted([T2I, STT, TTS])
        assert await instance.check() == ""
    async with adapter("http://127.0.0.1:9", key="") as keyless:
        assert await keyless.check() == "credentials missing: set HF_TOKEN"
    async with adapter("http://127.0.0.1:9", models={}) as unconfigured:
        assert unconfigured.describe().tasks == []


async def test_text_to_image_sends_inputs_and_parameters_and_returns_the_png(
    hf: tuple[FakeHuggingFace, str],
) -> None:
    fake, url = hf
    params = {"width": 72, "height": 64, "steps": 4, "seed": 3, "guidance_scale": 3.5}
    ctx = FakeContext(T2I, "a red fox", {**params, "negative_prompt": "blurry"})
    async with adapter(url) as instance:
        result = await instance.run(ctx)

    [output] = result.outputs
    assert (output.media_type, output.filename) == ("image/png", "image.png")
    assert Image.open(io.BytesIO(output.data)).tobytes() == render("a red fox", 3, 72, 64).tobytes()
    [request] = fake.faults.requests
    assert request.path == f"/models/{FLUX}"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "image/png"
    assert json.loads(request.body) == {
        "inputs": "a red fox",
        "parameters": {
            "width": 72,
            "height": 64,
            "num_inference_steps": 4,
            "seed": 3,
            "guidance_scale": 3.5,
            "negative_prompt": "blurry",
        },
    }


async def test_unset_parameters_are_left_to_the_model(hf: tuple[FakeHuggingFace, str]) -> None:
    fake, url = hf
    async with adapter(url) as instance:
        result = await instance.run(FakeContext(T2I, "a lighthouse"))
    assert json.loads(fake.faults.requests[0].body) == {"inputs": "a lighthouse", "parameters": {}}
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (256, 256)


async def test_speech_to_text_posts_the_audio_bytes(hf: tuple[FakeHuggingFace, str]) -> None:
    fake, url = hf
    audio = tone(1.5)
    async with adapter(url) as instance:
        typed = await instance.run(
            FakeContext(STT, "", inputs=[audio], input_media_type="audio/wav")
        )
        # No media type on the asset: the bytes say what they are.
        untyped = await instance.run(FakeContext(STT, "", inputs=[audio]))
    assert typed.text == untyped.text == "I heard 1.50 seconds of audio."
    request = fake.faults.requests[0]
    assert request.path == f"/models/{WHISPER}" and request.body == audio
    assert all(r.headers["content-type"] == "audio/wav" for r in fake.faults.requests)


async def test_speech_to_text_rejects_what_is_not_audio(hf: tuple[FakeHuggingFace, str]) -> None:
    fake, url = hf
    async with adapter(url) as instance:
        with pytest.raises(InvalidInput, match="needs audio, got image/png"):
            await instance.run(FakeContext(STT, "", inputs=[b"\x89PNG\r\n\x1a\n...."]))
        assert fake.faults.requests == []
        # Audio the provider cannot decode: its own reason comes back.
        garbled = b"RIFF\x00\x00\x00\x00WAVEjunk"
        with pytest.raises(InvalidInput) as rejected:
            await instance.run(FakeContext(STT, "", inputs=[garbled]))
    assert BAD_AUDIO[:60] in rejected.value.message


async def test_text_to_speech_returns_the_audio(hf: tuple[FakeHuggingFace, str]) -> None:
    fake, url = hf
    async with adapter(url) as instance:
        result = await instance.run(FakeContext(TTS, "hello there"))
    [output] = result.outputs
    assert (output.media_type, output.filename) == ("audio/wav", "speech.wav")
    rate, seconds = wav_info(output.data)
    assert rate == 16000 and seconds == pytest.approx(0.55)
    assert fake.faults.requests[0].path == f"/models/{MMS}"
    assert json.loads(fake.faults.requests[0].body) == {"inputs": "hello there"}


async def test_a_loading_model_is_retryable_after_its_estimated_time(
    hf: tuple[FakeHuggingFace, str],
) -> None:
    fake, url = hf
    fake.load(FLUX, 20)
    async with adapter(url) as instance:
        with pytest.raises(Retryable) as loading:
            await instance.run(FakeContext(T2I, "a fox"))
    assert loading.value.code == "model_loading"
    assert loading.value.retry_after == pytest.approx(20, abs=1)
    assert f"Model {FLUX} is currently loading" in loading.value.message


async def test_wait_for_model_holds_the_call_until_the_model_is_loaded(
    hf: tuple[FakeHuggingFace, str],
) -> None:
    fake, url = hf
    fake.load(MMS, 0.3)
    async with adapter(url, options={"wait_for_model": True}) as instance:
        result = await instance.run(FakeContext(TTS, "hi"))
    assert result.outputs[0].media_type == "audio/wav"
    assert fake.faults.requests[0].headers["x-wait-for-model"] == "true"


async def test_provider_errors_are_classified_and_never_show_the_key(
    hf: tuple[FakeHuggingFace, str],
) -> None:
    fake, url = hf
    ctx = FakeContext(T2I, "a fox")
    async with adapter(url) as instance:
        fake.faults.inject(Injected(429, {"error": "Rate limit reached"}, {"Retry-After": "6"}))
        with pytest.raises(Retryable) as limited:
            await instance.run(ctx)
        assert limited.value.retry_after == 6 and "Rate limit reached" in limited.value.message

        fake.faults.inject(Injected(500, {"error": "Internal Server Error"}))
        with pytest.raises(Retryable, match="Internal Server Error"):
            await instance.run(ctx)

        # A plain 503 (no estimated_time) is an ordinary unavailable provider.
        fake.faults.inject(Injected(503, {"error": "Service Unavailable"}))
        with pytest.raises(Retryable) as unavailable:
            await instance.run(ctx)
        assert unavailable.value.code == "provider_unavailable"

        fake.faults.inject(Injected(400, {"error": f"token {TOKEN} may not do that"}))
        with pytest.raises(InvalidInput) as echoed:
            await instance.run(ctx)
        assert TOKEN not in str(echoed.value) and "***" in echoed.value.message

        with pytest.raises(InvalidInput, match="width must be a multiple of 8, got 100"):
            await instance.run(FakeContext(T2I, "a fox", {"width": 100}))

    async with adapter(url, models={"text-to-image": "nobody/nothing"}) as unknown:
        with pytest.raises(InvalidInput, match="Model nobody/nothing does not exist"):
            await unknown.run(ctx)

    wrong = "hf_wrong_key_987"
    async with adapter(url, key=wrong) as denied:
        with pytest.raises(Fatal) as unauthorized:
            await denied.run(ctx)
    assert unauthorized.value.code == "unauthorized" and wrong not in str(unauthorized.value)
    assert "Invalid credentials" in unauthorized.value.message


async def test_cancelling_hangs_up_on_the_provider(hf: tuple[FakeHuggingFace, str]) -> None:
    fake, url = hf
    fake.latency = 10.0
    async with adapter(url) as instance:
        await cancel_when(
            instance.run(FakeContext(T2I, "slow fox")),
            lambda: len(fake.faults.requests) == 1,
            10.0,
            afterwards=lambda: fake.abandoned == [f"/models/{FLUX}"],
        )


async def test_a_slow_provider_times_out_as_retryable(hf: tuple[FakeHuggingFace, str]) -> None:
    fake, url = hf
    fake.latency = 2.0
    async with adapter(url, timeout=0.2) as instance:
        with pytest.raises(Retryable, match="did not answer in time"):
            await instance.run(FakeContext(TTS, "hello"))
