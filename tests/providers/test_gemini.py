"""The Gemini adapter against a fake Gemini API on loopback (real HTTP and SSE, real PNGs)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import DEFAULT_CATALOG, load_catalog
from services.providers.gemini import GeminiAdapter
from tests.fakes.comfyui import render
from tests.fakes.gemini import KEY, FakeGemini, describe
from tests.fakes.server import Injected, serving
from tests.providers.harness import FakeContext, cancel_when, provider_config

T2T, I2T = job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT
T2I, I2I = job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_IMAGE
FLASH, FLASH_IMAGE = "gemini-2.5-flash", "gemini-2.5-flash-image"


@pytest.fixture
async def gemini() -> AsyncIterator[tuple[FakeGemini, str]]:
    fake = FakeGemini()
    async with serving(fake.app) as url:
        yield fake, url


def adapter(url: str, key: str = KEY, **overrides: Any) -> aclosing[GeminiAdapter]:
    models = load_catalog(DEFAULT_CATALOG, {})["gemini"].models
    options = {"progress_interval": 0.0}
    config = provider_config("gemini", url, key, models, key_env="GEMINI_API_KEY", options=options)
    return aclosing(GeminiAdapter(replace(config, **overrides)))


def png(width: int, height: int, seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    render("input", seed, width, height).save(buffer, format="PNG")
    return buffer.getvalue()


def sent(fake: FakeGemini, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(fake.faults.requests[index].body)
    return body


async def test_the_shipped_catalog_serves_text_vision_and_images(
    gemini: tuple[FakeGemini, str],
) -> None:
    fake, url = gemini
    async with adapter(url) as instance:
        assert sorted(instance.describe().tasks) == sorted([T2T, I2T, T2I, I2I])
        assert await instance.check() == ""
        probed = [r.path for r in fake.faults.requests]
        assert probed == [f"/models/{FLASH}", f"/models/{FLASH_IMAGE}"]
        # The probe is cached: the worker's frequent checks cost no requests.
        assert await instance.check() == ""
        assert len(fake.faults.requests) == 2
    async with adapter(url, key="") as keyless:
        assert await keyless.check() == "credentials missing: set GEMINI_API_KEY"
    async with adapter(url, key="AIza-wrong-key") as wrong:
        reason = await wrong.check()
    assert "API key not valid" in reason and "AIza-wrong-key" not in reason


async def test_text_streams_with_progress_and_generation_config(
    gemini: tuple[FakeGemini, str],
) -> None:
    fake, url = gemini
    fake.chunk_delay = 0.02
    prompt = "tell me about red foxes hunting mice under the snow in winter"
    params = {"temperature": 0.3, "top_p": 0.9, "max_output_tokens": 100, "seed": 5}
    ctx = FakeContext(T2T, prompt, {**params, "system": "Be brief."})
    async with adapter(url) as instance:
        result = await instance.run(ctx)

    assert result.text == f"(Be brief.) Echo: {prompt}"
    [request] = fake.faults.requests
    assert request.path == f"/models/{FLASH}:streamGenerateContent"
    assert request.headers["x-goog-api-key"] == KEY
    assert sent(fake) == {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 100, "seed": 5},
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
    }
    # The text shows up while it streams, growing chunk by chunk.
    tails = [message for _, message in ctx.progress_reports]
    assert len(tails) >= 3 and tails[0] == "(Be brief.) Echo: " and result.text.startswith(tails[1])


async def test_a_token_limit_returns_the_text_so_far(gemini: tuple[FakeGemini, str]) -> None:
    _, url = gemini
    async with adapter(url) as instance:
        result = await instance.run(
            FakeContext(T2T, "one two three four five", {"max_output_tokens": 3})
        )
    assert result.text == "Echo: one two"


async def test_thinking_that_uses_up_the_limit_is_the_callers_to_raise(
    gemini: tuple[FakeGemini, str],
) -> None:
    fake, url = gemini
    fake.thinking_tokens = 40
    spent, roomy = ({"max_output_tokens": limit} for limit in (32, 64))
    async with adapter(url) as instance:
        with pytest.raises(InvalidInput) as raised:
            await instance.run(FakeContext(T2T, "one two three", spent))
        # Room left after thinking: the answer comes.
        result = await instance.run(FakeContext(T2T, "one two", roomy))
    assert raised.value.code == "no_text"
    assert raised.value.message == (
        "gemini used up max_output_tokens (32) before writing any text (reasoning models "
        "spend tokens thinking first): raise max_output_tokens"
    )
    assert result.text == "Echo: one two"


async def test_an_empty_answer_is_left_to_the_runtime_not_retried(
    gemini: tuple[FakeGemini, str],
) -> None:
    fake, url = gemini
    candidate = {"content": {"role": "model"}, "finishReason": "STOP", "index": 0}
    event = f"data: {json.dumps({'candidates': [candidate]})}\r\n\r\n"
    fake.faults.inject(Injected(200, event, {"content-type": "text/event-stream"}))
    async with adapter(url) as instance:
        result = await instance.run(FakeContext(T2T, "say nothing"))
    # Not the caller's doing: the runtime fails it as empty_output, never retried.
    assert result.text == ""


async def test_image_to_text_sends_the_image_inline(gemini: tuple[FakeGemini, str]) -> None:
    fake, url = gemini
    image = png(32, 16)
    expected = describe(Image.open(io.BytesIO(image)))
    async with adapter(url) as instance:
        asked = await instance.run(FakeContext(I2T, "what is it?", inputs=[image]))
        default = await instance.run(FakeContext(I2T, "", inputs=[image]))
    assert asked.text == f"{expected} You asked: what is it?"
    assert default.text == f"{expected} You asked: Describe this image."
    [inline, text] = sent(fake)["contents"][0]["parts"]
    assert inline == {
        "inline_data": {"mime_type": "image/png", "data": base64.b64encode(image).decode()}
    }
    assert text == {"text": "Describe this image."}


async def test_inputs_gemini_cannot_read_are_rejected_first(gemini: tuple[FakeGemini, str]) -> None:
    fake, url = gemini
    async with adapter(url) as instance:
        with pytest.raises(InvalidInput, match=r"one of image/png, .*, got audio/wav"):
            await instance.run(FakeContext(I2T, "", inputs=[b"RIFF\x00\x00\x00\x00WAVEfmt "]))
        with pytest.raises(InvalidInput, match="needs one input image"):
            await instance.run(FakeContext(I2T, "what?"))
        with pytest.raises(InvalidInput, match=r"aspect_ratio must be a string \(one of 1:1, "):
            await instance.run(FakeContext(T2I, "a fox", {"aspect_ratio": "7:3"}))
    assert fake.faults.requests == []


async def test_text_to_image_returns_the_inline_png(gemini: tuple[FakeGemini, str]) -> None:
    fake, url = gemini
    ctx = FakeContext(T2I, "a lighthouse at dusk", {"aspect_ratio": "16:9", "seed": 9})
    async with adapter(url) as instance:
        result = await instance.run(ctx)
    [output] = result.outputs
    assert (output.media_type, output.filename) == ("image/png", "image-1.png")
    picture = Image.open(io.BytesIO(output.data))
    assert picture.size == (64, 36)
    assert picture.tobytes() == render("a lighthouse at dusk", 9, 64, 36).tobytes()
    assert fake.faults.requests[0].path == f"/models/{FLASH_IMAGE}:generateContent"
    assert sent(fake)["generationConfig"] == {
        "seed": 9,
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "16:9"},
    }


async def test_image_to_image_edits_the_input(gemini: tuple[FakeGemini, str]) -> None:
    fake, url = gemini
    source = png(40, 24)
    async with adapter(url) as instance:
        result = await instance.run(FakeContext(I2I, "make it snowy", inputs=[source]))
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (40, 24)
    parts = sent(fake)["contents"][0]["parts"]
    assert parts[0]["inline_data"]["data"] == base64.b64encode(source).decode()
    assert parts[1] == {"text": "make it snowy"}


@pytest.mark.parametrize(
    ("task", "prompt", "kind", "reason"),
    [
        (
            T2T,
            "something forbidden",
            InvalidInput,
            "blocked the prompt: SAFETY .HARM_CATEGORY_DANGEROUS",
        ),
        (T2I, "a forbidden picture", InvalidInput, "blocked the prompt: SAFETY"),
        (T2T, "an unsafe answer", InvalidInput, "stopped answering: finishReason SAFETY"),
        (T2I, "an unsafe picture", InvalidInput, "refused the image: finishReason IMAGE_SAFETY"),
        (T2I, "just chat with me", Retryable, "returned no image .finish STOP.: Here is the"),
    ],
)
async def test_refusals_name_the_reason(
    gemini: tuple[FakeGemini, str], task: int, prompt: str, kind: type[Exception], reason: str
) -> None:
    _, url = gemini
    async with adapter(url) as instance:
        with pytest.raises(kind, match=reason):
            await instance.run(FakeContext(task, prompt))  # type: ignore[arg-type]


async def test_provider_errors_are_classified_and_never_show_the_key(
    gemini: tuple[FakeGemini, str],
) -> None:
    fake, url = gemini
    ctx = FakeContext(T2T, "hello")
    exhausted = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota. Please retry in 37.2s.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    overloaded = {
        "error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
    }
    async with adapter(url) as instance:
        fake.faults.inject(Injected(429, exhausted))
        with pytest.raises(Retryable) as limited:
            await instance.run(ctx)
        assert limited.value.retry_after == 37 and "exceeded your current quota" in str(
            limited.value
        )

        fake.faults.inject(Injected(503, overloaded))
        with pytest.raises(Retryable, match="overloaded"):
            await instance.run(FakeContext(T2I, "a fox"))

        echo = {"error": {"code": 400, "message": f"bad {KEY}", "status": "INVALID_ARGUMENT"}}
        fake.faults.inject(Injected(400, echo))
        with pytest.raises(InvalidInput) as echoed:
            await instance.run(ctx)
        assert KEY not in str(echoed.value) and "***" in echoed.value.message

        region = {
            "error": {
                "code": 400,
                "message": "User location is not supported for the API use.",
                "status": "FAILED_PRECONDITION",
            }
        }
        fake.faults.inject(Injected(400, region))
        with pytest.raises(Fatal, match="location is not supported"):
            await instance.run(ctx)

    async with adapter(url, models={"text-to-text": "gemini-0.1-nope"}) as unknown:
        with pytest.raises(InvalidInput, match=r"models/gemini-0\.1-nope is not found"):
            await unknown.run(ctx)

    async with adapter(url, key="AIza-wrong-key") as wrong:
        with pytest.raises(Fatal) as denied:
            await wrong.run(ctx)
    assert denied.value.code == "unauthorized" and "AIza-wrong-key" not in str(denied.value)
    assert "API key not valid" in denied.value.message and "GEMINI_API_KEY" in denied.value.message


async def test_cancelling_a_stream_hangs_up(gemini: tuple[FakeGemini, str]) -> None:
    fake, url = gemini
    fake.chunk_delay = 5.0
    ctx = FakeContext(T2T, "a long answer with many words to stream slowly")
    async with adapter(url) as instance:
        await cancel_when(
            instance.run(ctx),
            lambda: len(ctx.progress_reports) >= 1,
            10.0,
            afterwards=lambda: fake.abandoned == [f"/models/{FLASH}:streamGenerateContent"],
        )


async def test_cancelling_an_image_request_hangs_up(gemini: tuple[FakeGemini, str]) -> None:
    fake, url = gemini
    fake.latency = 10.0
    async with adapter(url) as instance:
        await cancel_when(
            instance.run(FakeContext(T2I, "a slow fox")),
            lambda: len(fake.faults.requests) == 1,
            10.0,
            afterwards=lambda: fake.abandoned == [f"/models/{FLASH_IMAGE}:generateContent"],
        )
