"""The ElevenLabs adapter against a fake ElevenLabs API on loopback (real HTTP, real audio)."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import ProviderConfig, load_catalog
from services.providers.elevenlabs import DEFAULT_VOICE, ElevenLabsAdapter
from services.providers.registry import build_adapter
from tests.fakes.elevenlabs import ElevenLabsFake, parse_mp3_header
from tests.fakes.server import Injected
from tests.providers.harness import FakeContext, cancel_when, hosted, provider_config, run_once

KEY = "el-secret-key-0123456789"
TTS = job_pb2.TASK_TEXT_TO_SPEECH
TEXT = "The quick brown fox jumps over the lazy dog, again and again, until it is tired."


@pytest.fixture
async def fake() -> AsyncIterator[ElevenLabsFake]:
    async with hosted(ElevenLabsFake(api_key=KEY, chunk_size=4096)) as fake:
        yield fake


def make_adapter(fake: ElevenLabsFake, key: str = KEY, **options: Any) -> ElevenLabsAdapter:
    models = {"text-to-speech": "eleven_multilingual_v2"}
    config = provider_config(
        "elevenlabs", fake.url, key, models, key_env="ELEVENLABS_API_KEY", options=options
    )
    return ElevenLabsAdapter(config)


def context(**parameters: Any) -> FakeContext:
    previous = parameters.pop("previous_request_id", "")
    return FakeContext(TTS, TEXT, parameters, provider="elevenlabs", previous_request_id=previous)


async def run(fake: ElevenLabsFake, ctx: FakeContext, **options: Any) -> Any:
    return await run_once(make_adapter(fake, **options), ctx)


def test_describe_declares_tts_with_voice_and_real_output_formats() -> None:
    config = ProviderConfig(
        name="elevenlabs", family="elevenlabs", models={"text-to-speech": "eleven_v3"}
    )
    provider = ElevenLabsAdapter(config).describe()
    assert list(provider.tasks) == [TTS]
    specs = {p.name: p for p in provider.parameters}
    assert specs["voice_id"].default_value.string_value == DEFAULT_VOICE
    assert "mp3_44100_128" in specs["output_format"].allowed_values
    assert "pcm_16000" in specs["output_format"].allowed_values
    assert specs["speed"].minimum == pytest.approx(0.7)
    assert specs["speed"].maximum == pytest.approx(1.2)


def test_the_shipped_catalog_builds_it_with_its_tasks() -> None:
    catalog = load_catalog(None, {})
    adapter = build_adapter("elevenlabs", catalog)
    assert isinstance(adapter, ElevenLabsAdapter)
    assert sorted(adapter.describe().tasks) == sorted([TTS])
    assert catalog["elevenlabs"].missing_key()  # a key is needed, and none is set here


async def test_streams_real_mp3_records_history_id_and_reports_progress(
    fake: ElevenLabsFake,
) -> None:
    ctx = context(stability=0.4, speed=1.1, seed=7)
    result = await run(fake, ctx)

    [output] = result.outputs
    assert output.media_type == "audio/mpeg" and output.filename == "speech.mp3"
    assert parse_mp3_header(output.data) == (44100, 128)
    [body] = fake.syntheses
    assert body == {
        "text": TEXT,
        "model_id": "eleven_multilingual_v2",
        "voice_settings": {"stability": 0.4, "speed": 1.1},
        "seed": 7,
    }
    request = next(r for r in fake.faults.requests if r.method == "POST")
    assert request.path == f"/v1/text-to-speech/{DEFAULT_VOICE}/stream"
    assert request.headers["xi-api-key"] == KEY
    # The history item is recorded before the audio is read, so a redelivery can fetch it.
    [recorded] = ctx.request_ids
    assert fake.history[recorded][0] == output.data
    marks = [what for what, _ in ctx.timeline]
    assert marks[0] == f"request id {recorded}"
    assert any("KiB of audio" in message for _, message in ctx.progress_reports)


async def test_pcm_is_wrapped_in_a_wav_header_with_its_sample_rate(fake: ElevenLabsFake) -> None:
    result = await run(fake, context(output_format="pcm_16000"))
    [output] = result.outputs
    assert output.media_type == "audio/wav"
    with wave.open(io.BytesIO(output.data)) as audio:
        assert audio.getframerate() == 16000 and audio.getsampwidth() == 2
        assert audio.getnframes() > 16000  # over a second of speech


async def test_non_streaming_endpoint_reports_percent_from_content_length(
    fake: ElevenLabsFake,
) -> None:
    fake.chunk_size = 1024
    ctx = context(output_format="wav_44100")
    result = await run(fake, ctx, stream=False)
    with wave.open(io.BytesIO(result.outputs[0].data)) as audio:
        assert audio.getframerate() == 44100
    assert fake.faults.requests[-1].path == f"/v1/text-to-speech/{DEFAULT_VOICE}"
    percents = [p for p, _ in ctx.progress_reports if p is not None]
    assert percents and percents == sorted(percents) and max(percents) < 100


async def test_bad_parameters_are_rejected_before_any_request(fake: ElevenLabsFake) -> None:
    with pytest.raises(InvalidInput, match=r"output_format must be .*mp3_44100_128"):
        await run(fake, context(output_format="flac_44100"))
    with pytest.raises(InvalidInput, match="speed must be"):
        await run(fake, context(speed=2.0))
    with pytest.raises(InvalidInput, match="voice_id must be letters and digits"):
        await run(fake, context(voice_id="../../v1/user"))
    assert fake.faults.requests == []


async def test_provider_rejections_are_invalid_input_with_its_reason(
    fake: ElevenLabsFake,
) -> None:
    with pytest.raises(InvalidInput, match="voice_id nobody was not found"):
        await run(fake, context(voice_id="nobody"))
    fake.max_characters = 10
    with pytest.raises(InvalidInput, match="this model allows 10"):
        await run(fake, context())
    assert fake.syntheses == []


async def test_rate_limits_and_outages_are_retryable(fake: ElevenLabsFake) -> None:
    busy = {"detail": {"status": "too_many_concurrent_requests", "message": "Too many requests"}}
    fake.faults.inject(Injected(429, busy, {"Retry-After": "3"}))
    with pytest.raises(Retryable) as limited:
        await run(fake, context())
    assert limited.value.retry_after == 3 and "Too many" in limited.value.message

    fake.faults.inject(Injected(503, {"detail": {"status": "system_busy", "message": "busy"}}))
    with pytest.raises(Retryable, match="busy"):
        await run(fake, context())


async def test_a_wrong_key_is_fatal_and_never_appears_in_errors(fake: ElevenLabsFake) -> None:
    with pytest.raises(Fatal, match="Invalid API key") as wrong:
        await run_once(make_adapter(fake, key="el-wrong-key-999"), context())
    assert "el-wrong-key-999" not in str(wrong.value)

    echoed = {"detail": {"status": "invalid_api_key", "message": f"key {KEY} is revoked"}}
    fake.faults.inject(Injected(401, echoed))
    with pytest.raises(Fatal) as revoked:
        await run(fake, context())
    assert KEY not in str(revoked.value) and "***" in str(revoked.value)


async def test_cancelling_drops_the_stream_at_elevenlabs(fake: ElevenLabsFake) -> None:
    fake.chunk_size, fake.chunk_delay = 1024, 0.05
    ctx = context()
    await cancel_when(
        run(fake, ctx), lambda: ctx.request_ids, 5.0, afterwards=lambda: fake.aborted_streams > 0
    )
    assert fake.aborted_streams == 1


async def test_redelivery_fetches_the_paid_audio_from_history(fake: ElevenLabsFake) -> None:
    first = await run(fake, context())
    [history_id] = fake.history
    redelivered = context(previous_request_id=history_id)
    again = await run(fake, redelivered)
    assert again.outputs[0].data == first.outputs[0].data
    assert again.outputs[0].media_type == "audio/mpeg"
    assert len(fake.syntheses) == 1  # no second synthesis was paid for
    assert redelivered.request_ids == []


async def test_redelivery_without_history_speaks_again(fake: ElevenLabsFake) -> None:
    fake.history_enabled = False
    ctx = context(previous_request_id="req-from-a-dead-worker")
    result = await run(fake, ctx)
    assert parse_mp3_header(result.outputs[0].data)[0] == 44100
    assert len(fake.syntheses) == 1
    assert ctx.request_ids and ctx.request_ids[0] != "req-from-a-dead-worker"


async def test_check_reports_missing_and_rejected_keys(fake: ElevenLabsFake) -> None:
    assert await make_adapter(fake, key="").check() == "credentials missing: set ELEVENLABS_API_KEY"
    async with (
        aclosing(make_adapter(fake, key="el-nope")) as wrong,
        aclosing(make_adapter(fake)) as good,
    ):
        assert "Invalid API key" in await wrong.check()
        assert await good.check() == ""
        probes = len(fake.faults.requests)
        assert await good.check() == ""
        assert len(fake.faults.requests) == probes  # cached, not a probe every heartbeat


async def test_check_accepts_a_key_scoped_to_speech(fake: ElevenLabsFake) -> None:
    fake.speech_only_keys.add("el-speech-only")
    async with aclosing(make_adapter(fake, key="el-speech-only")) as adapter:
        assert await adapter.check() == ""
        result = await adapter.run(context())
        assert parse_mp3_header(result.outputs[0].data) == (44100, 128)
