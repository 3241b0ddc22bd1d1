"""The fal adapter against a fake of fal's queue API on loopback: real HTTP, real files."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import ProviderConfig, load_catalog
from services.providers.fal import FalAdapter
from services.providers.sandbox import media
from tests.fakes.fal import FalFake
from tests.fakes.server import Injected, serving
from tests.providers.harness import FakeContext, cancel_when, provider_config, run_once

KEY = "fal-secret-0123456789"
# The shipped catalog's models: the fake serves exactly those.
MODELS = dict(load_catalog(None, {})["fal"].models)
PHOTO = media.text_to_image("a harbour", 3, 96, 64)


def config(url: str, key: str = KEY, **options: Any) -> ProviderConfig:
    return provider_config("fal", url, key, MODELS, key_env="FAL_KEY", options=options)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FalFake, str]]:
    fal = FalFake(KEY)
    async with serving(fal.app) as url:
        yield fal, url


@pytest.fixture
async def adapter(fake: tuple[FalFake, str]) -> AsyncIterator[FalAdapter]:
    async with aclosing(FalAdapter(config(fake[1]))) as built:
        yield built


def image_job(prompt: str = "a red fox", **parameters: Any) -> FakeContext:
    return FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, prompt, parameters, provider="fal")


async def test_describe_and_check() -> None:
    async with aclosing(FalAdapter(config("http://127.0.0.1:9"))) as adapter:
        described = adapter.describe()
        assert described.family == "fal"
        assert set(described.tasks) == {
            job_pb2.TASK_TEXT_TO_IMAGE,
            job_pb2.TASK_IMAGE_TO_IMAGE,
            job_pb2.TASK_IMAGE_TO_VIDEO,
            job_pb2.TASK_SPEECH_TO_TEXT,
        }
        sizes = next(p for p in described.parameters if p.name == "image_size")
        assert "square_hd" in sizes.allowed_values
        assert await adapter.check() == ""
    async with aclosing(FalAdapter(config("http://127.0.0.1:9", key=""))) as keyless:
        assert await keyless.check() == "credentials missing: set FAL_KEY"


async def test_text_to_image_reports_queue_position_and_logs_then_downloads_pngs() -> None:
    fal = FalFake(KEY, queue_seconds=0.2, queue_ahead=3, run_seconds=0.2)
    async with serving(fal.app) as url:
        ctx = image_job(num_images=2, image_size="landscape_16_9", seed=7)
        result = await run_once(FalAdapter(config(url)), ctx)

    assert [o.filename for o in result.outputs] == ["image-1.png", "image-2.png"]
    for output in result.outputs:
        assert output.media_type == "image/png"
        assert Image.open(io.BytesIO(output.data)).size == (128, 72)
    messages = [m for _, m in ctx.progress_reports]
    assert any(m.startswith("queued, position") for m in messages)
    steps = [(p, m) for p, m in ctx.progress_reports if m.startswith("step")]
    assert steps and all(p is not None for p, _ in steps)
    assert steps == sorted(steps, key=lambda s: s[0] or 0)
    (submit,) = fal.script.calls("submit")
    assert submit.path == "/fal-ai/flux/schnell"
    assert submit.headers["authorization"] == f"Key {KEY}"
    assert ctx.request_ids == list(fal.queued)
    # Status lives under owner/app, without the model's subpath.
    rid = ctx.request_ids[0]
    assert {c.path for c in fal.script.calls("status")} == {f"/fal-ai/flux/requests/{rid}/status"}
    # The id was recorded before the first poll.
    first_poll = next(i for i, (what, _) in enumerate(ctx.timeline) if what.startswith("progress"))
    assert ctx.timeline[0][0] == f"request id {rid}" and first_poll > 0


async def test_image_to_image_sends_the_input_as_a_data_uri(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    fal, _ = fake
    ctx = FakeContext(
        job_pb2.TASK_IMAGE_TO_IMAGE,
        "in sepia",
        {"output_format": "jpeg", "strength": 0.5},
        [PHOTO],
        provider="fal",
        input_media_type="image/png",
    )
    result = await adapter.run(ctx)
    (output,) = result.outputs
    assert output.media_type == "image/jpeg" and output.filename == "image.jpg"
    assert Image.open(io.BytesIO(output.data)).format == "JPEG"
    (queued,) = fal.queued.values()
    assert queued.model == "fal-ai/flux/dev/image-to-image"
    assert queued.input["image_url"].startswith("data:image/png;base64,")
    assert queued.input["strength"] == 0.5


async def test_image_to_video_downloads_the_video_file(adapter: FalAdapter) -> None:
    ctx = FakeContext(
        job_pb2.TASK_IMAGE_TO_VIDEO, "waves roll", {"duration": "10"}, [PHOTO], provider="fal"
    )
    (output,) = (await adapter.run(ctx)).outputs
    assert output.media_type == "image/gif" and output.filename == "video.gif"
    assert getattr(Image.open(io.BytesIO(output.data)), "n_frames", 1) > 1


async def test_speech_to_text_round_trips_real_wav(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    wav = media.text_to_speech("hello from the harbour", 60)
    ctx = FakeContext(job_pb2.TASK_SPEECH_TO_TEXT, "", {"language": "en"}, [wav], provider="fal")
    result = await adapter.run(ctx)
    assert result.text == "hello from the harbour"
    (queued,) = fake[0].queued.values()
    assert queued.input["audio_url"].startswith("data:audio/wav;base64,")
    assert queued.input["task"] == "transcribe" and queued.input["language"] == "en"


async def test_parameters_outside_the_contract_never_reach_fal(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await adapter.run(image_job(image_size="huge"))
    assert "image_size" in caught.value.message and "square_hd" in caught.value.message
    assert fake[0].script.requests == []


async def test_model_validation_errors_are_invalid_input_with_fals_reason(
    adapter: FalAdapter,
) -> None:
    # The contract allows 50 steps; FLUX schnell itself allows 12 and says so with a 422.
    with pytest.raises(InvalidInput, match="less than or equal to 12"):
        await adapter.run(image_job(num_inference_steps=20))


async def test_rate_limit_is_retryable_with_retry_after(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    fake[0].script.inject(
        Injected(429, {"detail": "Too many concurrent requests"}, {"Retry-After": "3"}),
        route="submit",
    )
    with pytest.raises(Retryable) as caught:
        await adapter.run(image_job())
    assert caught.value.retry_after == 3 and "concurrent" in caught.value.message


async def test_server_errors_while_polling_are_retryable(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    fake[0].run_seconds = 1.0
    fake[0].script.inject(
        Injected(503, {"detail": "Runner scheduling failure", "error_type": "x"}), route="status"
    )
    with pytest.raises(Retryable, match="Runner scheduling failure"):
        await adapter.run(image_job())


async def test_a_wrong_key_is_fatal_and_never_echoed(fake: tuple[FalFake, str]) -> None:
    wrong = "fal-wrong-key-987654321"
    async with aclosing(FalAdapter(config(fake[1], key=wrong))) as adapter:
        with pytest.raises(Fatal) as caught:
            await adapter.run(image_job())
        assert caught.value.code == "unauthorized" and "FAL_KEY" in caught.value.message
        # Even a provider that echoes the key back does not get it into our errors.
        fake[0].script.inject(Injected(401, {"detail": f"bad key {wrong}"}), route="submit")
        with pytest.raises(Fatal) as echoed:
            await adapter.run(image_job())
        assert wrong not in str(echoed.value) and "***" in echoed.value.message


async def test_cancelling_the_job_cancels_the_fal_request(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    fal, _ = fake
    fal.run_seconds = 30
    ctx = image_job()
    await cancel_when(adapter.run(ctx), lambda: ctx.request_ids, 5.0)
    rid = ctx.request_ids[0]
    assert fal.cancels == [rid]
    (cancel,) = fal.script.calls("cancel")
    assert cancel.method == "PUT" and cancel.path == f"/fal-ai/flux/requests/{rid}/cancel"


async def test_a_redelivered_job_resumes_its_request_without_a_second_submit(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    fal, _ = fake
    rid = fal.enqueue("fal-ai/flux/schnell", {"prompt": "a lighthouse", "image_size": "square"})
    ctx = FakeContext(
        job_pb2.TASK_TEXT_TO_IMAGE, "a lighthouse", provider="fal", previous_request_id=rid
    )
    (output,) = (await adapter.run(ctx)).outputs
    assert Image.open(io.BytesIO(output.data)).size == (64, 64)
    assert fal.script.calls("submit") == [] and ctx.request_ids == []


async def test_a_forgotten_or_failed_request_is_submitted_anew(
    fake: tuple[FalFake, str], adapter: FalAdapter
) -> None:
    fal, _ = fake
    unknown = FakeContext(
        job_pb2.TASK_TEXT_TO_IMAGE, "a boat", provider="fal", previous_request_id="gone"
    )
    assert len((await adapter.run(unknown)).outputs) == 1
    # An earlier attempt that ended in an error is not the result: pay for a fresh one.
    failed = fal.enqueue("fal-ai/flux/schnell", {"prompt": ""})
    retry = FakeContext(
        job_pb2.TASK_TEXT_TO_IMAGE, "a boat", provider="fal", previous_request_id=failed
    )
    assert len((await adapter.run(retry)).outputs) == 1
    assert len(fal.script.calls("submit")) == 2
    assert retry.request_ids and retry.request_ids[0] != failed


async def test_the_key_is_not_sent_to_a_file_host_on_another_origin() -> None:
    fal = FalFake(KEY)
    async with serving(fal.app) as api, serving(fal.app) as cdn:
        fal.files.base_url = cdn
        (output,) = (await run_once(FalAdapter(config(api)), image_job())).outputs
    assert output.data.startswith(b"\x89PNG")
    (download,) = fal.script.calls("file")
    assert "authorization" not in download.headers


async def test_a_request_that_outlives_max_wait_is_handed_back_not_cancelled(
    fake: tuple[FalFake, str],
) -> None:
    fal, url = fake
    fal.run_seconds = 30
    with pytest.raises(Retryable, match="will resume"):
        await run_once(FalAdapter(config(url, max_wait=0.1)), image_job())
    assert fal.cancels == []
