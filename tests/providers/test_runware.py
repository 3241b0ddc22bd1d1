"""The Runware adapter against a fake Runware REST API on loopback (real HTTP, real images)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import ProviderConfig, load_catalog
from services.providers.registry import build_adapter
from services.providers.runware import RunwareAdapter
from tests.fakes.runware import FLUX_DEV, FLUX_SCHNELL, RunwareFake, image_bytes
from tests.fakes.server import Injected
from tests.providers.harness import FakeContext, cancel_when, hosted, provider_config, run_once

KEY = "rw-secret-key-abcdef0123456789"
T2I = job_pb2.TASK_TEXT_TO_IMAGE
I2I = job_pb2.TASK_IMAGE_TO_IMAGE


@pytest.fixture
async def fake() -> AsyncIterator[RunwareFake]:
    async with hosted(RunwareFake(api_key=KEY)) as fake:
        yield fake


def make_adapter(fake: RunwareFake, key: str = KEY, **options: Any) -> RunwareAdapter:
    models = {"text-to-image": FLUX_SCHNELL, "image-to-image": FLUX_DEV}
    config = provider_config(
        "runware", fake.base_url, key, models, key_env="RUNWARE_API_KEY", options=options
    )
    return RunwareAdapter(config)


def context(
    task: job_pb2.Task.ValueType = T2I, previous: str = "", inputs: tuple[bytes, ...] = (), **p: Any
) -> FakeContext:
    p = {"width": 256, "height": 128} | p
    return FakeContext(
        task,
        "a red fox in snow",
        p,
        inputs,
        provider="runware",
        previous_request_id=previous,
        input_media_type="image/png" if inputs else "",
    )


async def run(fake: RunwareFake, ctx: FakeContext, key: str = KEY, **options: Any) -> Any:
    return await run_once(make_adapter(fake, key, **options), ctx)


def sent_tasks(fake: RunwareFake) -> list[dict[str, Any]]:
    return [t for r in fake.faults.requests if r.body for t in json.loads(r.body)]


def test_describe_declares_runware_limits() -> None:
    config = ProviderConfig(name="runware", family="runware", models={"text-to-image": "m"})
    provider = RunwareAdapter(config).describe()
    assert list(provider.tasks) == [T2I]  # image-to-image only with a configured model
    specs = {p.name: p for p in provider.parameters}
    assert (specs["width"].minimum, specs["width"].maximum) == (128, 2048)
    assert list(specs["output_format"].allowed_values) == ["JPG", "PNG", "WEBP"]
    assert "strength" not in specs


def test_the_shipped_catalog_builds_it_with_its_tasks() -> None:
    catalog = load_catalog(None, {})
    adapter = build_adapter("runware", catalog)
    assert isinstance(adapter, RunwareAdapter)
    assert sorted(adapter.describe().tasks) == sorted([T2I, I2I])
    assert catalog["runware"].missing_key()  # a key is needed, and none is set here


async def test_queues_polls_and_downloads_real_images(fake: RunwareFake) -> None:
    ctx = context(number_results=2, seed=99, steps=4)
    result = await run(fake, ctx)

    assert len(result.outputs) == 2
    for output in result.outputs:
        assert output.media_type == "image/png"
        assert Image.open(io.BytesIO(output.data)).size == (256, 128)
    [task] = fake.inferences
    assert task == {
        "taskType": "imageInference",
        "taskUUID": ctx.request_ids[0],
        "positivePrompt": "a red fox in snow",
        "model": FLUX_SCHNELL,
        "width": 256,
        "height": 128,
        "numberResults": 2,
        "outputType": "URL",
        "outputFormat": "PNG",
        "deliveryMethod": "async",
        "steps": 4,
        "seed": 99,
    }
    assert str(uuid.UUID(ctx.request_ids[0])) == ctx.request_ids[0]
    # The taskUUID is recorded before the task is sent, so a dead worker's task is found.
    assert ctx.timeline[0][0] == f"request id {task['taskUUID']}"
    assert fake.faults.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert fake.faults.requests[0].path == "/v1"
    assert (50.0, "Runware processing") in ctx.progress_reports  # one of two results ready
    assert fake.cdn_authorizations == [None, None]


async def test_base64_output_and_jpeg_format(fake: RunwareFake) -> None:
    result = await run(fake, context(output_format="JPG"), output_type="base64Data")
    [output] = result.outputs
    assert output.media_type == "image/jpeg" and output.filename == "image-0.jpg"
    assert Image.open(io.BytesIO(output.data)).format == "JPEG"
    assert fake.cdn_authorizations == []


async def test_image_to_image_sends_the_input_as_a_data_uri(fake: RunwareFake) -> None:
    source = image_bytes(64, 64, "PNG", "input")
    result = await run(fake, context(I2I, inputs=(source,), strength=0.35))
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (256, 128)
    [task] = fake.inferences
    assert task["model"] == FLUX_DEV and task["strength"] == 0.35
    assert task["seedImage"] == "data:image/png;base64," + base64.b64encode(source).decode()


async def test_bad_parameters_are_rejected_before_any_request(fake: RunwareFake) -> None:
    with pytest.raises(InvalidInput, match="width must be a multiple of 64, got 200"):
        await run(fake, context(width=200))
    with pytest.raises(InvalidInput, match=r"output_format must be .*one of JPG, PNG, WEBP"):
        await run(fake, context(output_format="GIF"))
    with pytest.raises(InvalidInput, match="number_results must be"):
        await run(fake, context(number_results=50))
    assert fake.faults.requests == []


async def test_provider_rejections_are_invalid_input(fake: RunwareFake) -> None:
    fake.models = {"civitai:1@1"}
    with pytest.raises(InvalidInput, match=f"Invalid model identifier: {FLUX_SCHNELL}"):
        await run(fake, context())


async def test_a_task_failing_at_runware_is_retryable(fake: RunwareFake) -> None:
    fake.fail_next = 1
    with pytest.raises(Retryable, match="The provider timed out"):
        await run(fake, context())


async def test_rate_limits_and_outages_are_retryable(fake: RunwareFake) -> None:
    limited_body = {"errors": [{"code": "rateLimitExceeded", "message": "Too many requests"}]}
    fake.faults.inject(Injected(429, limited_body, {"Retry-After": "4"}))
    with pytest.raises(Retryable) as limited:
        await run(fake, context())
    assert limited.value.retry_after == 4 and "Too many requests" in limited.value.message
    fake.faults.inject(Injected(500, {"errors": [{"code": "internalError", "message": "oops"}]}))
    with pytest.raises(Retryable, match="oops"):
        await run(fake, context())


async def test_a_wrong_key_is_fatal_and_never_appears_in_errors(fake: RunwareFake) -> None:
    with pytest.raises(Fatal, match="Invalid API key") as wrong:
        await run(fake, context(), key="rw-wrong-key-31337")
    assert "rw-wrong-key-31337" not in str(wrong.value)
    echoed = {"errors": [{"code": "invalidApiKey", "message": f"{KEY} is not valid"}]}
    fake.faults.inject(Injected(200, echoed))
    with pytest.raises(Fatal) as revoked:
        await run(fake, context())
    assert KEY not in str(revoked.value) and "***" in str(revoked.value)


async def test_redelivery_polls_the_recorded_task_without_sending_it_again(
    fake: RunwareFake,
) -> None:
    earlier = fake.existing(
        {"positivePrompt": "a fox", "model": FLUX_SCHNELL, "width": 128, "height": 128},
        processing_polls=1,
    )
    ctx = context(previous=earlier)
    result = await run(fake, ctx)
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (128, 128)
    assert fake.inferences == [] and ctx.request_ids == []
    assert {t["taskType"] for t in sent_tasks(fake)} == {"getResponse"}


async def test_redelivery_sends_a_task_runware_never_received(fake: RunwareFake) -> None:
    lost = str(uuid.uuid4())
    ctx = context(previous=lost)
    await run(fake, ctx)
    [task] = fake.inferences
    assert task["taskUUID"] == lost and ctx.request_ids == []


async def test_redelivery_of_a_failed_task_starts_a_new_one(fake: RunwareFake) -> None:
    failed = fake.existing(
        {"positivePrompt": "a fox", "model": FLUX_SCHNELL, "width": 128, "height": 128},
        fails=True,
    )
    ctx = context(previous=failed)
    await run(fake, ctx)
    [task] = fake.inferences
    assert task["taskUUID"] != failed and ctx.request_ids == [task["taskUUID"]]


async def test_cancelling_stops_polling(fake: RunwareFake) -> None:
    # Runware documents no cancel operation: the job stops asking, nothing else is sent.
    fake.processing_polls = 10_000
    ctx = context()
    await cancel_when(run(fake, ctx), lambda: bool(ctx.progress_reports))
    sent = len(fake.faults.requests)
    await asyncio.sleep(0.1)
    assert len(fake.faults.requests) == sent


async def test_check_needs_the_key(fake: RunwareFake) -> None:
    assert await make_adapter(fake, key="").check() == "credentials missing: set RUNWARE_API_KEY"
    assert await make_adapter(fake).check() == ""
