"""The sandbox adapter through the Adapter contract, driven by an in-memory JobContext."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from typing import Any

import pytest
from google.protobuf import json_format
from PIL import GifImagePlugin, Image

from genmesh.v1 import job_pb2, provider_service_pb2
from services.providers.adapter import (
    Adapter,
    Fatal,
    InvalidInput,
    ProviderError,
    Result,
    Retryable,
)
from services.providers.sandbox import SandboxAdapter, media
from tests.providers.harness import FakeContext

ALL_TASKS = [t for t in job_pb2.Task.values() if t != job_pb2.TASK_UNSPECIFIED]
PHOTO = media.text_to_image("a quiet street", 5, 160, 120)


def defaults(task: job_pb2.Task.ValueType) -> dict[str, Any]:
    """The parameters a runtime fills in from describe(), as Struct values (floats)."""
    provider = SandboxAdapter().describe()
    return {
        p.name: json_format.MessageToDict(p.default_value)
        for p in provider.parameters
        if p.HasField("default_value") and (not p.tasks or task in p.tasks)
    }


async def run(ctx: FakeContext) -> Result:
    adapter: Adapter = SandboxAdapter()
    return await adapter.run(ctx)


# --- describe / check ---------------------------------------------------------------------


def test_describe_declares_every_task_offline_and_free() -> None:
    provider = SandboxAdapter("sandbox-2").describe()
    assert provider.name == "sandbox-2" and provider.family == "sandbox"
    assert provider.offline and provider.cost_per_job_usd == 0
    assert sorted(provider.tasks) == sorted(ALL_TASKS)
    assert provider.description


def test_describe_declares_parameters_with_limits() -> None:
    specs = {p.name: p for p in SandboxAdapter().describe().parameters}
    assert len(specs) == len(SandboxAdapter().describe().parameters)  # names are unique
    integer = provider_service_pb2.PARAMETER_TYPE_INTEGER

    latency = specs["latency_ms"]
    assert latency.type == integer and (latency.minimum, latency.maximum) == (0, 600_000)
    assert latency.default_value.number_value == 0 and not latency.tasks
    assert specs["fail_rate"].type == provider_service_pb2.PARAMETER_TYPE_NUMBER
    assert (specs["fail_rate"].minimum, specs["fail_rate"].maximum) == (0, 1)
    assert list(specs["fail_kind"].allowed_values) == ["invalid_input", "retryable", "fatal"]
    assert specs["fail_kind"].default_value.string_value == "retryable"
    assert not specs["seed"].HasField("default_value")
    assert specs["steps"].default_value.number_value == 4
    assert specs["preview"].default_value.bool_value is True
    for side in ("width", "height"):
        assert (specs[side].minimum, specs[side].maximum) == (16, 2048)
        assert set(specs[side].tasks) == {job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_IMAGE}
    assert list(specs["style"].allowed_values) == list(media.STYLES)
    assert list(specs["style"].tasks) == [job_pb2.TASK_IMAGE_TO_IMAGE]
    assert list(specs["fps"].tasks) == [job_pb2.TASK_IMAGE_TO_VIDEO]
    assert list(specs["max_duration"].tasks) == [job_pb2.TASK_TEXT_TO_SPEECH]
    for spec in specs.values():
        assert spec.description
        if spec.allowed_values and spec.HasField("default_value"):
            assert spec.default_value.string_value in spec.allowed_values
        if spec.HasField("minimum") and spec.HasField("default_value"):
            assert spec.minimum <= spec.default_value.number_value <= spec.maximum


async def test_check_reports_always_usable() -> None:
    assert await SandboxAdapter().check() == ""


# --- every task ---------------------------------------------------------------------------


def job_for(task: job_pb2.Task.ValueType, *, apply_defaults: bool = True) -> FakeContext:
    """A valid job for `task`, with or without the defaults a runtime would apply."""
    wav = media.text_to_speech("good morning", 60)
    prompts = {
        job_pb2.TASK_TEXT_TO_TEXT: "tell me about foxes",
        job_pb2.TASK_TEXT_TO_IMAGE: "a red fox",
    }
    prompts[job_pb2.TASK_TEXT_TO_SPEECH] = "good morning"
    inputs = {
        job_pb2.TASK_IMAGE_TO_IMAGE: [PHOTO],
        job_pb2.TASK_SPEECH_TO_TEXT: [wav],
        job_pb2.TASK_IMAGE_TO_TEXT: [PHOTO],
        job_pb2.TASK_IMAGE_TO_VIDEO: [PHOTO],
    }
    params = defaults(task) if apply_defaults else {}
    return FakeContext(task, prompts.get(task, ""), params, inputs.get(task, []))


@pytest.mark.parametrize("task", ALL_TASKS)
@pytest.mark.parametrize("apply_defaults", [True, False])
async def test_every_task_produces_valid_output(
    task: job_pb2.Task.ValueType, apply_defaults: bool
) -> None:
    ctx = job_for(task, apply_defaults=apply_defaults)
    result = await run(ctx)

    if task in (job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_SPEECH_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT):
        assert result.text and not result.outputs
    else:
        assert len(result.outputs) == 1 and result.outputs[0].data
    out = result.outputs[0] if result.outputs else None
    if task == job_pb2.TASK_TEXT_TO_TEXT:
        assert "tell me about foxes" in result.text
    elif task == job_pb2.TASK_SPEECH_TO_TEXT:
        assert result.text == "good morning"
    elif task == job_pb2.TASK_IMAGE_TO_TEXT:
        assert "160x120" in result.text
    elif task == job_pb2.TASK_TEXT_TO_SPEECH:
        assert out is not None and out.media_type == "audio/wav"
        with wave.open(io.BytesIO(out.data)) as w:
            assert w.getnframes() / w.getframerate() == pytest.approx(12 * 0.08)
    elif task == job_pb2.TASK_IMAGE_TO_VIDEO:
        assert out is not None and out.media_type == "image/gif"
        video = Image.open(io.BytesIO(out.data))
        assert isinstance(video, GifImagePlugin.GifImageFile)
        assert video.n_frames == 16  # 2 s at 8 fps
    else:
        assert out is not None and out.media_type == "image/png"
        image = Image.open(io.BytesIO(out.data))
        expected = (512, 512) if task == job_pb2.TASK_TEXT_TO_IMAGE else (160, 120)
        assert image.format == "PNG" and image.size == expected
    assert len(ctx.progress_reports) == 4
    has_preview = task in (
        job_pb2.TASK_TEXT_TO_IMAGE,
        job_pb2.TASK_IMAGE_TO_IMAGE,
        job_pb2.TASK_IMAGE_TO_VIDEO,
    )
    assert len(ctx.previews) == int(has_preview)


async def test_text_to_image_honours_struct_numbers_and_seed() -> None:
    params = {"width": 128.0, "height": 96.0, "seed": 11.0, "latency_ms": 0.0}
    first = await run(FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "a fox", params))
    again = await run(FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "a fox", params))
    other = await run(FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "a fox", {**params, "seed": 12}))
    assert Image.open(io.BytesIO(first.outputs[0].data)).size == (128, 96)
    assert first.outputs[0].data == again.outputs[0].data != other.outputs[0].data


async def test_image_to_image_uses_style_and_box() -> None:
    params = {"style": "invert", "width": 80, "height": 80}
    result = await run(FakeContext(job_pb2.TASK_IMAGE_TO_IMAGE, "", params, [PHOTO]))
    out = Image.open(io.BytesIO(result.outputs[0].data))
    assert out.size == (80, 60)
    assert result.outputs[0].filename == "invert.png"


async def test_speech_round_trip_through_the_adapter() -> None:
    text = "the quick brown fox, twice: the quick brown fox!"
    tts = await run(FakeContext(job_pb2.TASK_TEXT_TO_SPEECH, text))
    stt = await run(FakeContext(job_pb2.TASK_SPEECH_TO_TEXT, "", inputs=[tts.outputs[0].data]))
    assert stt.text == text


async def test_text_to_text_answers_json_when_asked() -> None:
    prompt = "Write copy for a hand-thrown ceramic mug, glazed deep blue, ceramic handle"
    params = {"response_format": "json"}
    first = await run(FakeContext(job_pb2.TASK_TEXT_TO_TEXT, prompt, params))
    again = await run(FakeContext(job_pb2.TASK_TEXT_TO_TEXT, prompt, params))
    answer = json.loads(first.text)
    assert first.text == again.text  # deterministic
    assert set(answer) == {"title", "description", "keywords", "categories"}
    assert answer["keywords"][0] == "ceramic" and "mug" in answer["keywords"]
    assert answer["title"].startswith("Ceramic") and prompt in answer["description"]
    assert answer["categories"] and all(isinstance(c, str) for c in answer["categories"])
    plain = await run(FakeContext(job_pb2.TASK_TEXT_TO_TEXT, prompt, {"response_format": "text"}))
    assert plain.text.startswith("Sandbox reply")


# --- input errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctx", "code"),
    [
        (FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "   "), "missing_prompt"),
        (FakeContext(job_pb2.TASK_TEXT_TO_TEXT, ""), "missing_prompt"),
        (FakeContext(job_pb2.TASK_IMAGE_TO_TEXT, "what is this?"), "missing_input"),
        (FakeContext(job_pb2.TASK_SPEECH_TO_TEXT, "", inputs=[b""]), "empty_input"),
        (FakeContext(job_pb2.TASK_IMAGE_TO_VIDEO, "", inputs=[b"GIF89a garbage"]), "invalid_image"),
        (FakeContext(job_pb2.TASK_SPEECH_TO_TEXT, "", inputs=[PHOTO]), "invalid_audio"),
        (FakeContext(job_pb2.TASK_UNSPECIFIED, "hi"), "unsupported_task"),
    ],
)
async def test_bad_input_is_invalid_input(ctx: FakeContext, code: str) -> None:
    with pytest.raises(InvalidInput) as err:
        await run(ctx)
    assert err.value.code == code
    assert err.value.kind == job_pb2.ERROR_KIND_INVALID_INPUT
    assert not ctx.progress_reports  # rejected before any simulated work


@pytest.mark.parametrize(
    "params",
    [
        {"width": 4096},
        {"width": 12.5},
        {"latency_ms": -1},
        {"latency_ms": "fast"},
        {"steps": True},
        {"fail_rate": 1.5},
        {"fail_rate": float("nan")},
        {"fail_kind": "flaky"},
        {"preview": "yes"},
        {"style": "cubism"},
        {"seed": -3},
    ],
)
async def test_out_of_contract_parameters_are_invalid(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as err:
        await run(FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "a fox", params))
    assert err.value.code == "invalid_parameter"
    assert next(iter(params)) in err.value.message


# --- failure injection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error"),
    [("invalid_input", InvalidInput), ("retryable", Retryable), ("fatal", Fatal)],
)
async def test_fail_rate_one_always_fails_with_the_chosen_kind(
    kind: str, error: type[ProviderError]
) -> None:
    ctx = FakeContext(
        job_pb2.TASK_TEXT_TO_IMAGE,
        "a fox",
        {"fail_rate": 1.0, "fail_kind": kind, "latency_ms": 100},
    )
    started = time.monotonic()
    with pytest.raises(error) as err:
        await run(ctx)
    elapsed = time.monotonic() - started
    assert type(err.value) is error and err.value.kind == error.kind
    assert err.value.code == "sandbox_injected_failure" and kind in err.value.message
    assert not ctx.previews  # nothing was produced
    if kind == "invalid_input":
        # Rejected up front, as a real provider would refuse a bad request.
        assert elapsed < 0.09 and not ctx.progress_reports
    else:
        # Failed after doing the (simulated) work, like a timeout or a 5xx.
        assert elapsed >= 0.09 and len(ctx.progress_reports) == 4


async def test_fail_rate_zero_never_fails() -> None:
    for _ in range(20):
        await run(FakeContext(job_pb2.TASK_TEXT_TO_TEXT, "hi", {"fail_rate": 0.0}))


async def test_seeded_failures_are_reproducible() -> None:
    async def fails(seed: int) -> bool:
        ctx = FakeContext(job_pb2.TASK_TEXT_TO_TEXT, "hi", {"fail_rate": 0.5, "seed": seed})
        try:
            await run(ctx)
        except Retryable:
            return True
        return False

    outcomes = [await fails(seed) for seed in range(40)]
    assert outcomes == [await fails(seed) for seed in range(40)]
    assert 5 < sum(outcomes) < 35  # about half


async def test_unseeded_failures_are_drawn_per_attempt() -> None:
    outcomes = []
    for _ in range(60):
        try:
            await run(FakeContext(job_pb2.TASK_TEXT_TO_TEXT, "hi", {"fail_rate": 0.5}))
            outcomes.append(False)
        except Retryable:
            outcomes.append(True)
    assert any(outcomes) and not all(outcomes)


# --- latency, progress, previews, cancellation --------------------------------------------


async def test_latency_is_spread_over_progress_steps_with_preview_halfway() -> None:
    ctx = FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "a fox", {"latency_ms": 400, "steps": 4})
    started = time.monotonic()
    result = await run(ctx)
    elapsed = time.monotonic() - started

    assert 0.4 <= elapsed < 1.5
    assert ctx.progress_reports == [
        (25.0, "step 1/4"),
        (50.0, "step 2/4"),
        (75.0, "step 3/4"),
        (100.0, "step 4/4"),
    ]
    assert [what for what, _ in ctx.timeline] == [
        "progress step 1/4",
        "progress step 2/4",
        "preview",
        "progress step 3/4",
        "progress step 4/4",
    ]
    at = dict(ctx.timeline)
    assert 0.19 <= at["preview"] < elapsed - 0.15  # about halfway, well before the end
    assert 0.09 <= at["progress step 1/4"] < at["progress step 2/4"] < at["progress step 3/4"]

    preview = Image.open(io.BytesIO(ctx.previews[0].data))
    assert ctx.previews[0].media_type == "image/png" and preview.size == (64, 64)
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (512, 512)


async def test_no_steps_and_no_preview_when_asked() -> None:
    ctx = FakeContext(
        job_pb2.TASK_TEXT_TO_IMAGE, "a fox", {"latency_ms": 150, "steps": 0, "preview": False}
    )
    started = time.monotonic()
    await run(ctx)
    assert time.monotonic() - started >= 0.15
    assert ctx.timeline == []


async def test_cancelling_during_latency_stops_promptly() -> None:
    ctx = FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "a fox", {"latency_ms": 60_000, "steps": 60})
    job = asyncio.create_task(run(ctx))
    await asyncio.sleep(0.1)
    assert not job.done()
    started = time.monotonic()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert time.monotonic() - started < 0.2
    assert not ctx.progress_reports  # the first step was a second away


async def test_large_renders_leave_the_event_loop_free() -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    background = asyncio.create_task(ticker())
    try:
        params = {"width": 2048, "height": 2048, "seed": 99, "steps": 0, "preview": False}
        await run(FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, "a very large fox", params))
    finally:
        stop.set()
        await background
    # Rendered inline, the loop would run the ticker only once or twice around the render.
    assert ticks > 10
