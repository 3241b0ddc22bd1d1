"""The Pollo adapter against a fake Pollo platform API on loopback (real HTTP, MP4 bytes)."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import ProviderConfig, load_catalog
from services.providers.pollo import PolloAdapter
from services.providers.registry import build_adapter
from tests.fakes.pollo import POLLO_1_6, PolloFake
from tests.fakes.server import Injected
from tests.providers.harness import FakeContext, cancel_when, hosted, provider_config, run_once

KEY = "pollo_secret_key_0123456789abcdef"
I2V = job_pb2.TASK_IMAGE_TO_VIDEO


def still() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


STILL = still()


@pytest.fixture
async def fake() -> AsyncIterator[PolloFake]:
    async with hosted(PolloFake(api_key=KEY)) as fake:
        yield fake


def make_adapter(fake: PolloFake, key: str = KEY) -> PolloAdapter:
    models = {"image-to-video": POLLO_1_6}
    return PolloAdapter(
        provider_config("pollo", fake.base_url, key, models, key_env="POLLO_API_KEY")
    )


def context(previous: str = "", **parameters: Any) -> FakeContext:
    return FakeContext(
        I2V,
        "the leaves start to fall",
        parameters,
        [STILL],
        provider="pollo",
        previous_request_id=previous,
        input_media_type="image/png",
    )


async def run(fake: PolloFake, ctx: FakeContext, key: str = KEY) -> Any:
    return await run_once(make_adapter(fake, key), ctx)


def creates(fake: PolloFake) -> int:
    return sum(1 for r in fake.faults.requests if r.method == "POST")


def mp4_duration(data: bytes) -> float:
    """Seconds from the movie header, walking the top-level boxes."""
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"moov":
            mvhd = data[offset + 8 : offset + size]
            timescale, duration = struct.unpack(">II", mvhd[20:28])
            return duration / timescale
        offset += size
    raise AssertionError("no moov box")


def test_describe_declares_pollo_limits() -> None:
    config = ProviderConfig(name="pollo", family="pollo", models={"image-to-video": POLLO_1_6})
    provider = PolloAdapter(config).describe()
    assert list(provider.tasks) == [I2V]
    specs = {p.name: p for p in provider.parameters}
    assert list(specs["resolution"].allowed_values) == ["480p", "720p", "1080p"]
    assert (specs["length"].minimum, specs["length"].maximum) == (5, 10)


def test_the_shipped_catalog_builds_it_with_its_tasks() -> None:
    catalog = load_catalog(None, {})
    adapter = build_adapter("pollo", catalog)
    assert isinstance(adapter, PolloAdapter)
    assert sorted(adapter.describe().tasks) == sorted([I2V])
    assert catalog["pollo"].missing_key()  # a key is needed, and none is set here


async def test_creates_polls_and_downloads_the_mp4(fake: PolloFake) -> None:
    ctx = context(resolution="720p", length=10, seed=3)
    result = await run(fake, ctx)

    [output] = result.outputs
    assert output.media_type == "video/mp4" and output.filename == "video.mp4"
    assert output.data[4:8] == b"ftyp" and mp4_duration(output.data) == 10
    [task] = fake.tasks.values()
    assert task.model == POLLO_1_6
    assert task.input == {
        "image": "data:image/png;base64," + base64.b64encode(STILL).decode(),
        "prompt": "the leaves start to fall",
        "resolution": "720p",
        "length": 10,
        "seed": 3,
    }
    create = next(r for r in fake.faults.requests if r.method == "POST")
    assert create.path == "/api/platform/generation/pollo/pollo-v1-6"
    assert create.headers["x-api-key"] == KEY
    marks = [what for what, _ in ctx.timeline]
    assert marks[0] == f"request id {task.id}"
    assert marks[1:] == ["progress Pollo task waiting"] + ["progress Pollo task processing"] * 2
    assert fake.cdn_api_keys == [None]


async def test_unwrapped_create_and_wrapped_status_are_both_understood(fake: PolloFake) -> None:
    fake.wrap_create, fake.wrap_status = False, True
    result = await run(fake, context())
    assert mp4_duration(result.outputs[0].data) == 5


async def test_bad_parameters_are_rejected_before_any_request(fake: PolloFake) -> None:
    with pytest.raises(InvalidInput, match="length must be one of 5, 10, got 7"):
        await run(fake, context(length=7))
    with pytest.raises(InvalidInput, match=r"resolution must be .*480p, 720p, 1080p"):
        await run(fake, context(resolution="4k"))
    assert fake.faults.requests == []


async def test_provider_rejections_are_invalid_input(fake: PolloFake) -> None:
    fake.models = {"kling-ai/kling-v2-1"}
    with pytest.raises(InvalidInput, match="Not found"):
        await run(fake, context())


async def test_failed_tasks_are_classified_by_their_reason(fake: PolloFake) -> None:
    fake.failures = ["Generation failed, please try again later"]
    with pytest.raises(Retryable, match="try again later"):
        await run(fake, context())
    fake.failures = ["The image did not pass content moderation"]
    with pytest.raises(InvalidInput, match="content moderation"):
        await run(fake, context())


async def test_rate_limits_and_outages_are_retryable(fake: PolloFake) -> None:
    busy = {"message": "Too many requests", "code": "TOO_MANY_REQUESTS"}
    fake.faults.inject(Injected(429, busy, {"Retry-After": "30"}))
    with pytest.raises(Retryable) as limited:
        await run(fake, context())
    assert limited.value.retry_after == 30 and "Too many requests" in limited.value.message
    fake.faults.inject(Injected(503, {"message": "Service unavailable", "code": "UNAVAILABLE"}))
    with pytest.raises(Retryable, match="Service unavailable"):
        await run(fake, context())


async def test_a_wrong_key_is_fatal_and_never_appears_in_errors(fake: PolloFake) -> None:
    with pytest.raises(Fatal, match="Invalid API key") as wrong:
        await run(fake, context(), key="pollo_wrong_key_4242")
    assert "pollo_wrong_key_4242" not in str(wrong.value)
    echoed = {"message": f"API key {KEY} has no credits", "code": "FORBIDDEN"}
    fake.faults.inject(Injected(403, echoed))
    with pytest.raises(Fatal) as refused:
        await run(fake, context())
    assert KEY not in str(refused.value) and "***" in str(refused.value)


async def test_redelivery_resumes_the_recorded_task(fake: PolloFake) -> None:
    earlier = fake.existing(POLLO_1_6, {"prompt": "earlier", "length": 10}, processing_polls=2)
    ctx = context(previous=earlier)
    result = await run(fake, ctx)
    assert mp4_duration(result.outputs[0].data) == 10
    assert creates(fake) == 0 and ctx.request_ids == []


@pytest.mark.parametrize("previous", ["failed", "unknown"])
async def test_redelivery_of_a_failed_or_unknown_task_creates_a_new_one(
    fake: PolloFake, previous: str
) -> None:
    if previous == "failed":
        previous = fake.existing(POLLO_1_6, {"prompt": "x"}, processing_polls=0, fail_message="x")
    ctx = context(previous=previous)
    await run(fake, ctx)
    assert creates(fake) == 1 and ctx.request_ids[0] != previous


async def test_cancelling_stops_polling(fake: PolloFake) -> None:
    # Pollo documents no cancel endpoint: the job stops asking and sends nothing else.
    fake.processing_polls = 10_000
    ctx = context()
    await cancel_when(run(fake, ctx), lambda: len(ctx.progress_reports) > 1)
    sent = len(fake.faults.requests)
    await asyncio.sleep(0.1)
    assert len(fake.faults.requests) == sent


async def test_check_needs_the_key(fake: PolloFake) -> None:
    assert await make_adapter(fake, key="").check() == "credentials missing: set POLLO_API_KEY"
    assert await make_adapter(fake).check() == ""
