"""The Replicate adapter against a fake of the predictions API on loopback."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import ProviderConfig, load_catalog
from services.providers.replicate import ReplicateAdapter
from services.providers.sandbox import media
from tests.fakes.replicate import WHISPER_VERSION, ReplicateFake
from tests.fakes.server import Injected, serving
from tests.providers.harness import FakeContext, cancel_when, provider_config, run_once

TOKEN = "r8_secret_0123456789abcdef"
# The shipped catalog's models: the fake serves exactly those.
MODELS = dict(load_catalog(None, {})["replicate"].models)


def config(url: str, token: str = TOKEN, **options: Any) -> ProviderConfig:
    return provider_config(
        "replicate", f"{url}/v1", token, MODELS, key_env="REPLICATE_API_TOKEN", options=options
    )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[ReplicateFake, str]]:
    replicate = ReplicateFake(TOKEN)
    async with serving(replicate.app) as url:
        yield replicate, url


@pytest.fixture
async def adapter(fake: tuple[ReplicateFake, str]) -> AsyncIterator[ReplicateAdapter]:
    async with aclosing(ReplicateAdapter(config(fake[1]))) as built:
        yield built


def image_job(prompt: str = "a red fox", **parameters: Any) -> FakeContext:
    return FakeContext(job_pb2.TASK_TEXT_TO_IMAGE, prompt, parameters, provider="replicate")


def speech_job(wav: bytes, **parameters: Any) -> FakeContext:
    return FakeContext(job_pb2.TASK_SPEECH_TO_TEXT, "", parameters, [wav], provider="replicate")


async def test_check_probes_the_account_once_per_ttl(fake: tuple[ReplicateFake, str]) -> None:
    replicate, url = fake
    async with (
        aclosing(ReplicateAdapter(config(url))) as good,
        aclosing(ReplicateAdapter(config(url, token="r8_wrong"))) as bad,
    ):
        assert await good.check() == "" and await good.check() == ""
        reason = await bad.check()
        assert "valid authentication token" in reason and "r8_wrong" not in reason
        assert len(replicate.script.calls("account")) == 2
        assert set(good.describe().tasks) == {
            job_pb2.TASK_TEXT_TO_IMAGE,
            job_pb2.TASK_TEXT_TO_TEXT,
            job_pb2.TASK_SPEECH_TO_TEXT,
        }
    async with aclosing(ReplicateAdapter(config(url, token=""))) as keyless:
        assert await keyless.check() == "credentials missing: set REPLICATE_API_TOKEN"


async def test_text_to_image_reports_log_progress_and_a_preview_then_downloads() -> None:
    replicate = ReplicateFake(TOKEN, queue_seconds=0.1, run_seconds=0.3, previews=True)
    async with serving(replicate.app) as url:
        ctx = image_job(aspect_ratio="16:9", num_outputs=2, seed=3)
        result = await run_once(ReplicateAdapter(config(url)), ctx)

    assert [o.filename for o in result.outputs] == ["image-1.png", "image-2.png"]
    for output in result.outputs:
        assert output.media_type == "image/png"
        assert Image.open(io.BytesIO(output.data)).size == (128, 72)
    (preview,) = ctx.previews
    assert Image.open(io.BytesIO(preview.data)).size == (16, 16)
    percents = [p for p, _ in ctx.progress_reports if p is not None]
    assert percents and percents == sorted(percents)
    assert ctx.progress_reports[0] == (None, "starting")
    (create,) = replicate.script.calls("create")
    assert create.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    sent = json.loads(create.body)["input"]
    assert sent == {
        "prompt": "a red fox",
        "aspect_ratio": "16:9",
        "num_outputs": 2,
        "output_format": "png",
        "seed": 3,
    }
    assert ctx.request_ids == list(replicate.predictions)


async def test_text_to_text_joins_the_token_list(adapter: ReplicateAdapter) -> None:
    prompt = "write a product blurb for a brass lantern"
    ctx = FakeContext(job_pb2.TASK_TEXT_TO_TEXT, prompt, {"max_tokens": 200}, provider="replicate")
    assert (await adapter.run(ctx)).text == media.text_to_text(prompt)


async def test_speech_to_text_on_a_pinned_version_with_a_data_uri(
    fake: tuple[ReplicateFake, str], adapter: ReplicateAdapter
) -> None:
    wav = media.text_to_speech("the tide is coming in", 60)
    result = await adapter.run(speech_job(wav, language="en"))
    assert result.text == "the tide is coming in"
    (create,) = fake[0].script.calls("create")
    body = json.loads(create.body)
    assert create.path == "/v1/predictions" and body["version"] == WHISPER_VERSION
    assert body["input"]["audio"].startswith("data:audio/wav;base64,")
    assert "translate" not in body["input"]


async def test_large_inputs_are_uploaded_through_the_files_api(
    fake: tuple[ReplicateFake, str],
) -> None:
    replicate, url = fake
    adapter = ReplicateAdapter(config(url, data_uri_limit=1000))
    wav = media.text_to_speech("a long recording", 60)
    assert (await run_once(adapter, speech_job(wav))).text == "a long recording"
    (upload,) = replicate.script.calls("upload")
    assert upload.headers["content-type"].startswith("multipart/form-data")
    ((stored, media_type),) = replicate.uploads.values()
    assert stored == wav and media_type == "audio/wav"
    audio = json.loads(replicate.script.calls("create")[0].body)["input"]["audio"]
    assert audio.endswith(f"/v1/files/{next(iter(replicate.uploads))}")


async def test_prefer_wait_returns_the_finished_prediction_without_polling(
    fake: tuple[ReplicateFake, str],
) -> None:
    replicate, url = fake
    replicate.run_seconds = 0.1
    (output,) = (await run_once(ReplicateAdapter(config(url, wait=5)), image_job())).outputs
    assert output.data.startswith(b"\x89PNG")
    assert replicate.script.calls("create")[0].headers["prefer"] == "wait=5"
    assert replicate.script.calls("get") == []


async def test_parameters_outside_the_contract_never_reach_replicate(
    fake: tuple[ReplicateFake, str], adapter: ReplicateAdapter
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await adapter.run(image_job(aspect_ratio="7:3"))
    assert "aspect_ratio" in caught.value.message and "16:9" in caught.value.message
    assert fake[0].script.requests == []


async def test_input_validation_is_invalid_input_with_replicates_reason(
    adapter: ReplicateAdapter,
) -> None:
    with pytest.raises(InvalidInput, match=r"num_inference_steps: Must be less than or equal to 4"):
        await adapter.run(image_job(num_inference_steps=10))


async def test_throttling_is_retryable_with_retry_after(
    fake: tuple[ReplicateFake, str], adapter: ReplicateAdapter
) -> None:
    throttled = {
        "title": "Request was throttled.",
        "detail": "Request was throttled. Expected available in 4 seconds.",
        "status": 429,
    }
    fake[0].script.inject(Injected(429, throttled, {"Retry-After": "4"}), route="create")
    with pytest.raises(Retryable) as caught:
        await adapter.run(image_job())
    assert caught.value.retry_after == 4 and "throttled" in caught.value.message


async def test_server_errors_while_polling_are_retryable(
    fake: tuple[ReplicateFake, str], adapter: ReplicateAdapter
) -> None:
    fake[0].run_seconds = 1.0
    fake[0].script.inject(Injected(502, "<html>Bad Gateway</html>"), route="get")
    with pytest.raises(Retryable, match="502"):
        await adapter.run(image_job())


async def test_a_wrong_token_is_fatal_and_never_echoed(fake: tuple[ReplicateFake, str]) -> None:
    wrong = "r8_wrong_token_555555"
    with pytest.raises(Fatal) as caught:
        await run_once(ReplicateAdapter(config(fake[1], token=wrong)), image_job())
    assert caught.value.code == "unauthorized"
    assert "valid authentication token" in caught.value.message
    assert wrong not in str(caught.value)


async def test_a_failed_prediction_is_fatal_with_the_models_error(
    adapter: ReplicateAdapter,
) -> None:
    with pytest.raises(Fatal, match="Failed to load audio") as caught:
        await adapter.run(speech_job(b"definitely not audio"))
    assert caught.value.code == "generation_failed"


async def test_cancelling_the_job_cancels_the_prediction(
    fake: tuple[ReplicateFake, str], adapter: ReplicateAdapter
) -> None:
    replicate, _ = fake
    replicate.run_seconds = 30
    ctx = image_job()
    await cancel_when(adapter.run(ctx), lambda: ctx.request_ids, 5.0)
    pid = ctx.request_ids[0]
    assert replicate.canceled == [pid]
    (cancel,) = replicate.script.calls("cancel")
    assert cancel.method == "POST" and cancel.path == f"/v1/predictions/{pid}/cancel"


async def test_a_redelivered_job_resumes_its_prediction_without_a_second_create(
    fake: tuple[ReplicateFake, str], adapter: ReplicateAdapter
) -> None:
    replicate, _ = fake
    pid = replicate.start(
        "black-forest-labs/flux-schnell", {"prompt": "a lighthouse", "aspect_ratio": "3:4"}
    )
    ctx = FakeContext(
        job_pb2.TASK_TEXT_TO_IMAGE, "a lighthouse", provider="replicate", previous_request_id=pid
    )
    (output,) = (await adapter.run(ctx)).outputs
    # The fake's default format is webp: what the earlier delivery asked for, not ours.
    assert output.media_type == "image/webp" and output.filename == "image.webp"
    assert Image.open(io.BytesIO(output.data)).size == (96, 128)
    assert replicate.script.calls("create") == [] and ctx.request_ids == []


async def test_a_failed_or_forgotten_prediction_is_created_anew(
    fake: tuple[ReplicateFake, str], adapter: ReplicateAdapter
) -> None:
    replicate, _ = fake
    failed = replicate.start(f"openai/whisper:{WHISPER_VERSION}", {"audio": "data:,nope"})
    wav = media.text_to_speech("second try", 60)
    retry = FakeContext(
        job_pb2.TASK_SPEECH_TO_TEXT, "", {}, [wav], provider="replicate", previous_request_id=failed
    )
    assert (await adapter.run(retry)).text == "second try"
    gone = FakeContext(
        job_pb2.TASK_TEXT_TO_IMAGE, "a boat", provider="replicate", previous_request_id="gone"
    )
    assert len((await adapter.run(gone)).outputs) == 1
    assert len(replicate.script.calls("create")) == 2


async def test_the_token_is_not_sent_to_the_delivery_host() -> None:
    replicate = ReplicateFake(TOKEN)
    async with serving(replicate.app) as api, serving(replicate.app) as cdn:
        replicate.files.base_url = cdn
        (output,) = (await run_once(ReplicateAdapter(config(api)), image_job())).outputs
    assert output.data.startswith(b"\x89PNG")
    (download,) = replicate.script.calls("delivery")
    assert "authorization" not in download.headers
