"""The openai_compatible adapter against a fake OpenAI API on loopback: real HTTP, real bytes."""

from __future__ import annotations

import io
import json
import re
import wave
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, ProviderError, Retryable
from services.providers.config import DEFAULT_CATALOG, ProviderConfig, load_catalog
from services.providers.openai_compatible import OpenAICompatibleAdapter
from services.providers.openai_compatible.options import Options
from services.providers.registry import build_adapter
from tests.fakes.openai import FakeOpenAI, describe_image, wav
from tests.fakes.server import Injected, serving
from tests.providers.harness import FakeContext, cancel_when, provider_config, run_once

KEY = "sk-test-0123456789abcdef"
MODELS = {
    "text-to-text": "gpt-4o-mini",
    "image-to-text": "gpt-4o-mini",
    "text-to-image": "dall-e-2",
    "image-to-image": "gpt-image-1",
    "text-to-speech": "gpt-4o-mini-tts",
    "speech-to-text": "whisper-1",
}
T = job_pb2


@dataclass
class Setup:
    fake: FakeOpenAI
    url: str

    def adapter(
        self,
        *,
        models: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        key: str = KEY,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> OpenAICompatibleAdapter:
        config = provider_config(
            "openai_compatible",
            base_url or f"{self.url}/v1",
            key,
            MODELS if models is None else models,
            name="openai-test",
            key_env="OPENAI_TEST_KEY" if key else "",
            options={"progress_interval": 0, **(options or {})},
            timeout=timeout,
        )
        return OpenAICompatibleAdapter(config)

    def bodies(self, path: str) -> list[bytes]:
        return [r.body for r in self.fake.faults.requests if r.path == path]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    fake = FakeOpenAI(api_key=KEY)
    async with serving(fake.app()) as url:
        yield Setup(fake, url)


@pytest.fixture
async def adapter(setup: Setup) -> AsyncIterator[OpenAICompatibleAdapter]:
    async with aclosing(setup.adapter()) as built:
        yield built


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


# --- chat -----------------------------------------------------------------------------------


async def test_chat_streams_tokens_as_progress(setup: Setup) -> None:
    setup.fake.token_delay = 0.01
    prompt = "tell me about the red fox in the snow"
    ctx = FakeContext(T.TASK_TEXT_TO_TEXT, prompt, {"temperature": 0.2, "system": "Be brief."})
    result = await run_once(setup.adapter(), ctx)

    assert result.text == f"You said: {prompt}"
    # Streamed text arrives as progress, each report extending the one before.
    messages = [m for _, m in ctx.progress_reports]
    assert len(messages) >= 3
    assert all(result.text.startswith(m) for m in messages)
    assert [len(m) for m in messages] == sorted(len(m) for m in messages)
    request = next(r for r in setup.fake.faults.requests if r.path == "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(request.body)
    assert body["stream"] is True and body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.2
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": prompt},
    ]
    # A synchronous API: nothing to record or resume.
    assert ctx.request_ids == []


async def test_chat_json_response_format(adapter: OpenAICompatibleAdapter, setup: Setup) -> None:
    prompt = "Answer in JSON: a title for a blue mug"
    result = await adapter.run(
        FakeContext(T.TASK_TEXT_TO_TEXT, prompt, {"response_format": "json"})
    )

    assert json.loads(result.text) == {"reply": f"You said: {prompt}"}
    body = json.loads(setup.bodies("/v1/chat/completions")[-1])
    assert body["response_format"] == {"type": "json_object"}
    # OpenAI refuses JSON mode unless the messages ask for JSON.
    with pytest.raises(InvalidInput, match="must contain the word 'json'"):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "a title", {"response_format": "json"}))
    await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "a title", {}))
    assert "response_format" not in json.loads(setup.bodies("/v1/chat/completions")[-1])


async def test_max_tokens_truncates_and_uses_the_instance_field(setup: Setup) -> None:
    reasoning = {"text-to-text": "o4-mini"}
    params = {"max_tokens": 2}
    # A reasoning model rejects max_tokens, with OpenAI's own reason.
    with pytest.raises(InvalidInput, match="max_completion_tokens"):
        await run_once(
            setup.adapter(models=reasoning),
            FakeContext(T.TASK_TEXT_TO_TEXT, "one two three four", params),
        )
    modern = setup.adapter(models=reasoning, options={"max_tokens_field": "max_completion_tokens"})
    result = await run_once(modern, FakeContext(T.TASK_TEXT_TO_TEXT, "one two three four", params))
    assert result.text == "You said: "
    assert json.loads(setup.bodies("/v1/chat/completions")[-1])["max_completion_tokens"] == 2


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "in-one-piece"])
async def test_reasoning_that_uses_up_max_tokens_is_the_callers_to_raise(
    setup: Setup, streamed: bool
) -> None:
    setup.fake.reasoning_tokens = 64
    setup.fake.ignore_stream = not streamed
    reasoning = {"text-to-text": "o4-mini"}
    options = {"max_tokens_field": "max_completion_tokens"}
    async with aclosing(setup.adapter(models=reasoning, options=options)) as adapter:
        with pytest.raises(InvalidInput) as raised:
            await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hello", {"max_tokens": 32}))
        assert raised.value.code == "no_text"
        assert raised.value.message == (
            "openai-test used up max_tokens (32) before writing any text (reasoning models "
            "spend tokens thinking first): raise max_tokens"
        )
        # Room left after the reasoning: the answer comes.
        ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "hello", {"max_tokens": 100})
        assert (await adapter.run(ctx)).text == "You said: hello"


async def test_a_blank_answer_for_another_reason_is_left_to_the_runtime(setup: Setup) -> None:
    setup.fake.reply = lambda _prompt: " "
    result = await run_once(setup.adapter(), FakeContext(T.TASK_TEXT_TO_TEXT, "hello"))
    # Not the caller's doing: the runtime refuses it as empty_output (tests/e2e).
    assert result.text.strip() == ""


async def test_vision_sends_the_image_as_a_data_url(adapter: OpenAICompatibleAdapter) -> None:
    image = png(64, 48, (10, 200, 40))
    ctx = FakeContext(T.TASK_IMAGE_TO_TEXT, "", {"detail": "low"}, [image])
    result = await adapter.run(ctx)
    # The fake decoded exactly our pixels from the data: URL.
    assert result.text == f"You said: Describe this image. {describe_image(image)}"
    assert "64x48" in result.text


async def test_a_server_that_ignores_stream_true_still_works(setup: Setup) -> None:
    setup.fake.ignore_stream = True
    result = await run_once(setup.adapter(), FakeContext(T.TASK_TEXT_TO_TEXT, "hello there"))
    assert result.text == "You said: hello there"


async def test_an_error_inside_the_stream_is_retryable(setup: Setup) -> None:
    setup.fake.fail_stream_after = 2
    with pytest.raises(Retryable, match="had an error processing"):
        await run_once(setup.adapter(), FakeContext(T.TASK_TEXT_TO_TEXT, "a b c d e f"))


async def test_cancelling_closes_the_stream_at_the_provider(setup: Setup) -> None:
    setup.fake.token_delay = 0.1
    # The adapter stays open until the fake has seen the cancelled call's client leave.
    async with aclosing(setup.adapter()) as adapter:
        ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "word " * 200)
        await cancel_when(
            adapter.run(ctx),
            lambda: bool(ctx.progress_reports),
            5,
            # The fake sees its client leave: OpenAI stops generating (and billing) there.
            afterwards=lambda: setup.fake.abandoned == ["/v1/chat/completions"],
        )


async def test_a_redelivered_job_sends_one_fresh_request(adapter: OpenAICompatibleAdapter) -> None:
    ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "again", previous_request_id="chatcmpl-old")
    assert (await adapter.run(ctx)).text == "You said: again"


# --- images ---------------------------------------------------------------------------------


async def test_text_to_image_returns_the_providers_png(
    setup: Setup, adapter: OpenAICompatibleAdapter
) -> None:
    ctx = FakeContext(T.TASK_TEXT_TO_IMAGE, "a lighthouse", {"size": "256x256", "n": 2})
    result = await adapter.run(ctx)

    assert [o.data for o in result.outputs] == setup.fake.produced
    assert [o.media_type for o in result.outputs] == ["image/png", "image/png"]
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (256, 256)
    body = json.loads(setup.bodies("/v1/images/generations")[0])
    assert body == {
        "model": "dall-e-2",
        "n": 2,
        "size": "256x256",
        "response_format": "b64_json",
        "prompt": "a lighthouse",
    }


@pytest.mark.parametrize("asked", [False, True], ids=["server-chooses-urls", "option-asks-urls"])
async def test_image_urls_are_downloaded_without_the_key(setup: Setup, asked: bool) -> None:
    setup.fake.image_urls = not asked
    adapter = setup.adapter(options={"image_response_format": "url"} if asked else {})
    result = await run_once(
        adapter, FakeContext(T.TASK_TEXT_TO_IMAGE, "a fox", {"size": "256x256"})
    )
    assert result.outputs[0].data == setup.fake.produced[0]
    body = json.loads(setup.bodies("/v1/images/generations")[0])
    assert body["response_format"] == ("url" if asked else "b64_json")
    download = next(r for r in setup.fake.faults.requests if r.path.startswith("/files/"))
    # The URL may point at a CDN: our key must not travel there.
    assert "authorization" not in download.headers


async def test_partial_images_stream_as_previews(setup: Setup) -> None:
    ctx = FakeContext(T.TASK_TEXT_TO_IMAGE, "a kite", {"partial_images": 2})
    result = await run_once(setup.adapter(models={"text-to-image": "gpt-image-1"}), ctx)
    assert len(ctx.previews) == 2
    assert all(Image.open(io.BytesIO(p.data)).size == (128, 128) for p in ctx.previews)
    assert [o.data for o in result.outputs] == setup.fake.produced
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (1024, 1024)
    body = json.loads(setup.bodies("/v1/images/generations")[0])
    # GPT image models always answer base64 and reject response_format.
    assert body["stream"] is True and body["partial_images"] == 2
    assert "response_format" not in body


async def test_image_edit_uploads_the_input_as_multipart(
    setup: Setup, adapter: OpenAICompatibleAdapter
) -> None:
    source = png(300, 200)
    ctx = FakeContext(
        T.TASK_IMAGE_TO_IMAGE,
        "make it blue",
        {"size": "1536x1024", "output_format": "webp", "quality": "low"},
        [source],
    )
    result = await adapter.run(ctx)

    output = result.outputs[0]
    assert output.data == setup.fake.produced[0]
    assert output.media_type == "image/webp" and output.filename.endswith(".webp")
    assert Image.open(io.BytesIO(output.data)).size == (1536, 1024)
    request = next(r for r in setup.fake.faults.requests if r.path == "/v1/images/edits")
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert source in request.body


async def test_image_edit_streams_partial_images(setup: Setup) -> None:
    params = {"partial_images": 1, "size": "1024x1536"}
    ctx = FakeContext(T.TASK_IMAGE_TO_IMAGE, "sketch it", params, [png(64, 64)])
    result = await run_once(setup.adapter(), ctx)
    assert len(ctx.previews) == 1 and ctx.previews[0].media_type == "image/png"
    assert result.outputs[0].data == setup.fake.produced[0]
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (1024, 1536)


async def test_image_edit_needs_a_prompt(adapter: OpenAICompatibleAdapter) -> None:
    with pytest.raises(InvalidInput, match="needs a prompt"):
        await adapter.run(FakeContext(T.TASK_IMAGE_TO_IMAGE, "", {}, [png(8, 8)]))


@pytest.mark.parametrize(
    ("model", "params", "error"),
    [
        ("dall-e-3", {"size": "256x256"}, "size must be one of 1024x1024, 1792x1024, 1024x1792"),
        ("dall-e-3", {"n": 2}, "n must be <= 1 for dall-e-3"),
        ("dall-e-2", {"quality": "hd"}, "quality must be one of standard for dall-e-2"),
        ("gpt-image-1", {"size": "1792x1024"}, "size must be one of auto, 1024x1024"),
        ("dall-e-2", {"partial_images": 1}, "partial_images is not supported by dall-e-2"),
        ("dall-e-2", {"size": "999x999"}, "size must be a string (one of auto, 256x256"),
    ],
)
async def test_model_limits_are_checked_before_anything_is_sent(
    setup: Setup, model: str, params: dict[str, Any], error: str
) -> None:
    adapter = setup.adapter(models={"text-to-image": model})
    with pytest.raises(InvalidInput, match=re.escape(error)):
        await run_once(adapter, FakeContext(T.TASK_TEXT_TO_IMAGE, "x", params))
    assert setup.bodies("/v1/images/generations") == []


# --- audio ----------------------------------------------------------------------------------


async def test_speech_returns_real_audio(setup: Setup, adapter: OpenAICompatibleAdapter) -> None:
    params = {"voice": "coral", "response_format": "wav", "speed": 2.0, "instructions": "calm"}
    result = await adapter.run(FakeContext(T.TASK_TEXT_TO_SPEECH, "hello world!", params))

    output = result.outputs[0]
    assert output.data == setup.fake.produced[0]
    assert (output.media_type, output.filename) == ("audio/wav", "speech.wav")
    with wave.open(io.BytesIO(output.data)) as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(0.36, abs=0.01)
    body = json.loads(setup.bodies("/v1/audio/speech")[0])
    assert body == {
        "model": "gpt-4o-mini-tts",
        "input": "hello world!",
        "voice": "coral",
        "response_format": "wav",
        "speed": 2.0,
        "instructions": "calm",
    }

    mp3 = await adapter.run(FakeContext(T.TASK_TEXT_TO_SPEECH, "hi"))
    assert mp3.outputs[0].media_type == "audio/mpeg"
    assert mp3.outputs[0].data[:2] == b"\xff\xfb"


async def test_transcription_uploads_the_audio(
    setup: Setup, adapter: OpenAICompatibleAdapter
) -> None:
    ctx = FakeContext(
        T.TASK_SPEECH_TO_TEXT, "names: Ada", {"language": "en"}, [wav(1.5)], input_media_type=""
    )
    result = await adapter.run(ctx)
    assert result.text == "A 1.50 second recording."
    body = setup.bodies("/v1/audio/transcriptions")[0]
    for field in (b'name="language"\r\n\r\nen', b'name="prompt"\r\n\r\nnames: Ada'):
        assert field in body
    assert b'filename="audio.wav"' in body


async def test_transcription_rejects_what_it_cannot_send(
    adapter: OpenAICompatibleAdapter,
) -> None:
    ctx = FakeContext(T.TASK_SPEECH_TO_TEXT, "", {}, [b"plain text"], input_media_type="text/plain")
    with pytest.raises(InvalidInput, match="not text/plain"):
        await adapter.run(ctx)


# --- parameters, errors, keys ----------------------------------------------------------------


async def test_bad_parameters_name_the_allowed_values(adapter: OpenAICompatibleAdapter) -> None:
    with pytest.raises(InvalidInput, match=re.escape("voice must be a string (one of alloy, ash")):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_SPEECH, "hi", {"voice": "robot"}))
    with pytest.raises(InvalidInput, match=re.escape("speed must be a number (>= 0.25, <= 4)")):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_SPEECH, "hi", {"speed": 9}))
    with pytest.raises(InvalidInput, match=re.escape("temperature must be a number (>= 0, <= 2)")):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi", {"temperature": 3}))


@pytest.mark.parametrize(
    ("injected", "kind", "text"),
    [
        (
            Injected(
                400,
                {"error": {"message": "Your prompt was rejected", "type": "invalid_request_error"}},
            ),
            InvalidInput,
            "Your prompt was rejected",
        ),
        (
            Injected(
                429,
                {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
                {"retry-after": "3"},
            ),
            Retryable,
            "Rate limit reached",
        ),
        (
            Injected(
                429,
                {"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}},
            ),
            Fatal,
            "exceeded your quota",
        ),
        (Injected(500, {"error": {"message": "The server had an error"}}), Retryable, "server had"),
        (Injected(503, "upstream connect error"), Retryable, "upstream connect error"),
    ],
)
async def test_provider_errors_are_classified(
    setup: Setup,
    adapter: OpenAICompatibleAdapter,
    injected: Injected,
    kind: type[ProviderError],
    text: str,
) -> None:
    setup.fake.faults.inject(injected)
    with pytest.raises(kind, match=text) as caught:
        await adapter.run(FakeContext(T.TASK_TEXT_TO_IMAGE, "x", {"size": "256x256"}))
    assert type(caught.value) is kind
    if injected.status == 429 and kind is Retryable:
        assert caught.value.retry_after == 3


async def test_a_wrong_key_is_fatal_and_never_shown(setup: Setup) -> None:
    wrong = "sk-wrong-key-that-must-not-leak"
    async with aclosing(setup.adapter(key=wrong)) as adapter:
        with pytest.raises(Fatal, match="Incorrect API key provided") as caught:
            await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
        assert caught.value.code == "unauthorized"
        assert wrong not in str(caught.value)
        reason = await adapter.check()
    assert "401" in reason and wrong not in reason


async def test_a_key_echoed_by_the_provider_is_scrubbed(
    setup: Setup, adapter: OpenAICompatibleAdapter
) -> None:
    setup.fake.faults.inject(Injected(400, {"error": {"message": f"bad request for {KEY}"}}))
    with pytest.raises(InvalidInput) as caught:
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
    assert KEY not in str(caught.value) and "***" in caught.value.message


async def test_a_slow_provider_times_out_as_retryable(setup: Setup) -> None:
    setup.fake.latency = 1.0
    with pytest.raises(Retryable, match="did not answer in time"):
        await run_once(setup.adapter(timeout=0.2), FakeContext(T.TASK_TEXT_TO_SPEECH, "hi"))


# --- health, catalog --------------------------------------------------------------------------


async def test_check_probes_models_once_per_ttl(setup: Setup) -> None:
    async with aclosing(setup.adapter(options={"check_ttl": 60})) as adapter:
        assert await adapter.check() == ""
        assert await adapter.check() == ""
    probes = [r for r in setup.fake.faults.requests if r.path == "/v1/models"]
    assert len(probes) == 1 and probes[0].headers["authorization"] == f"Bearer {KEY}"


async def test_check_asks_the_configured_path(setup: Setup) -> None:
    async with aclosing(setup.adapter(options={"check_path": "/key"})) as adapter:
        reason = await adapter.check()
    # The OpenAI fake has no /key (OpenRouter's): the probe went there and says so.
    assert setup.fake.faults.requests == [] and "HTTP 404" in reason


async def test_check_reports_a_missing_key_without_calling(setup: Setup) -> None:
    config = ProviderConfig(
        name="openai-test",
        family="openai_compatible",
        base_url=f"{setup.url}/v1",
        api_key_env="OPENAI_TEST_KEY",
        models=MODELS,
    )
    async with aclosing(OpenAICompatibleAdapter(config)) as adapter:
        assert await adapter.check() == "credentials missing: set OPENAI_TEST_KEY"
    assert setup.fake.faults.requests == []


async def test_keyless_local_server_unreachable_is_a_reason_not_a_crash(setup: Setup) -> None:
    async with aclosing(setup.adapter(key="", base_url="http://127.0.0.1:9/v1")) as adapter:
        reason = await adapter.check()
    assert reason == "cannot reach openai-test at http://127.0.0.1:9/v1 (ConnectError)"


async def test_check_models_reports_models_the_server_lacks(setup: Setup) -> None:
    setup.fake.api_key = ""
    models = {"text-to-text": "gpt-4o-mini", "image-to-text": "llava"}
    adapter = setup.adapter(key="", models=models, options={"check_models": True})
    async with aclosing(adapter):
        assert await adapter.check() == "openai-test does not list model llava"


async def test_openrouter_attribution_headers_come_from_options(setup: Setup) -> None:
    options = {"app_url": "https://gm.example", "app_title": "genmesh", "headers": {"X-A": "b"}}
    await run_once(setup.adapter(options=options), FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
    headers = setup.fake.faults.requests[-1].headers
    assert headers["http-referer"] == "https://gm.example"
    assert headers["x-title"] == "genmesh" and headers["x-a"] == "b"


def test_unknown_or_bad_options_fail_at_start_up() -> None:
    said = "unknown openai_compatible option 'progress' (did you mean 'progress_interval'?)"
    with pytest.raises(ValueError, match=re.escape(said)):
        OpenAICompatibleAdapter(ProviderConfig("x", "openai_compatible", options={"progress": 1}))
    config = ProviderConfig("x", "openai_compatible", options={"max_tokens_field": "tokens"})
    with pytest.raises(ValueError, match="max_tokens_field must be one of"):
        Options.parse(config)


async def test_shipped_instances_declare_their_tasks() -> None:
    catalog = load_catalog(DEFAULT_CATALOG, {"OPENAI_API_KEY": KEY, "OPENROUTER_API_KEY": KEY})
    adapters = {n: build_adapter(n, catalog) for n in ("openai", "openrouter", "ollama-openai")}
    try:
        openai = adapters["openai"].describe()
        assert set(openai.tasks) == {
            T.TASK_TEXT_TO_TEXT,
            T.TASK_IMAGE_TO_TEXT,
            T.TASK_TEXT_TO_IMAGE,
            T.TASK_IMAGE_TO_IMAGE,
            T.TASK_TEXT_TO_SPEECH,
            T.TASK_SPEECH_TO_TEXT,
        }
        size = next(p for p in openai.parameters if p.name == "size")
        assert "1536x1024" in size.allowed_values
        router = adapters["openrouter"].describe()
        assert set(router.tasks) == {T.TASK_TEXT_TO_TEXT, T.TASK_IMAGE_TO_TEXT}
        # Only the parameters of tasks the instance serves are listed.
        assert "voice" not in {p.name for p in router.parameters}
    finally:
        for built in adapters.values():
            await built.aclose()
