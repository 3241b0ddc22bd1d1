"""The Leonardo adapter against a fake Leonardo REST API on loopback (real HTTP, real PNGs)."""

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
from services.providers.leonardo import LeonardoAdapter
from services.providers.registry import build_adapter
from tests.fakes.leonardo import PHOENIX, LeonardoFake
from tests.fakes.server import Injected
from tests.providers.harness import FakeContext, cancel_when, hosted, provider_config, run_once

KEY = "0b6a3f0e-5c1d-4e2b-9a7f-leo-secret"
T2I = job_pb2.TASK_TEXT_TO_IMAGE


@pytest.fixture
async def fake() -> AsyncIterator[LeonardoFake]:
    async with hosted(LeonardoFake(api_key=KEY)) as fake:
        yield fake


def make_adapter(fake: LeonardoFake, key: str = KEY) -> LeonardoAdapter:
    models = {"text-to-image": PHOENIX}
    return LeonardoAdapter(
        provider_config("leonardo", fake.base_url, key, models, key_env="LEONARDO_API_KEY")
    )


def context(previous: str = "", **parameters: Any) -> FakeContext:
    parameters = {"width": 256, "height": 128} | parameters
    return FakeContext(
        T2I, "a lighthouse at dusk", parameters, provider="leonardo", previous_request_id=previous
    )


async def run(fake: LeonardoFake, ctx: FakeContext, key: str = KEY) -> Any:
    return await run_once(make_adapter(fake, key), ctx)


def creates(fake: LeonardoFake) -> int:
    return sum(1 for r in fake.faults.requests if r.method == "POST")


def test_describe_declares_leonardo_limits() -> None:
    config = ProviderConfig(name="leonardo", family="leonardo", models={"text-to-image": PHOENIX})
    provider = LeonardoAdapter(config).describe()
    assert list(provider.tasks) == [T2I]
    specs = {p.name: p for p in provider.parameters}
    assert (specs["width"].minimum, specs["width"].maximum) == (32, 1536)
    assert (specs["num_images"].minimum, specs["num_images"].maximum) == (1, 8)
    assert "CINEMATIC" in specs["preset_style"].allowed_values


def test_the_shipped_catalog_builds_it_with_its_tasks() -> None:
    catalog = load_catalog(None, {})
    adapter = build_adapter("leonardo", catalog)
    assert isinstance(adapter, LeonardoAdapter)
    assert sorted(adapter.describe().tasks) == sorted([T2I])
    assert catalog["leonardo"].missing_key()  # a key is needed, and none is set here


async def test_generates_polls_and_downloads_real_pngs(fake: LeonardoFake) -> None:
    ctx = context(num_images=2, seed=42, preset_style="CINEMATIC")
    result = await run(fake, ctx)

    assert len(result.outputs) == 2
    for output in result.outputs:
        assert output.media_type == "image/png"
        assert Image.open(io.BytesIO(output.data)).size == (256, 128)
    [generation] = fake.generations.values()
    assert generation.body == {
        "prompt": "a lighthouse at dusk",
        "modelId": PHOENIX,
        "width": 256,
        "height": 128,
        "num_images": 2,
        "public": False,
        "seed": 42,
        "presetStyle": "CINEMATIC",
    }
    assert ctx.request_ids == [generation.id]
    marks = [what for what, _ in ctx.timeline]
    assert marks[0] == f"request id {generation.id}"  # recorded before any polling
    assert ("progress Leonardo generation pending") in marks
    # The CDN never saw our key.
    assert fake.cdn_authorizations == [None, None]


async def test_redelivery_resumes_the_recorded_generation(fake: LeonardoFake) -> None:
    earlier = fake.existing(
        {"prompt": "a lighthouse", "modelId": PHOENIX, "width": 64, "height": 64}, pending_polls=1
    )
    ctx = context(previous=earlier)
    result = await run(fake, ctx)
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (64, 64)
    assert creates(fake) == 0  # no second generation was paid for
    assert ctx.request_ids == []


async def test_redelivery_of_a_failed_generation_creates_a_new_one(fake: LeonardoFake) -> None:
    failed = fake.existing({"prompt": "x", "modelId": PHOENIX}, fails=True)
    ctx = context(previous=failed)
    result = await run(fake, ctx)
    assert len(result.outputs) == 1 and creates(fake) == 1
    assert ctx.request_ids and ctx.request_ids[0] != failed


async def test_a_failed_generation_is_retryable(fake: LeonardoFake) -> None:
    fake.fail_next = 1
    with pytest.raises(Retryable, match="failed"):
        await run(fake, context())


async def test_bad_parameters_are_rejected_before_any_request(fake: LeonardoFake) -> None:
    with pytest.raises(InvalidInput, match="width must be a multiple of 8, got 250"):
        await run(fake, context(width=250))
    with pytest.raises(InvalidInput, match="num_images must be <= 4"):
        await run(fake, context(width=1024, num_images=6))
    with pytest.raises(InvalidInput, match=r"height must be .*<= 1536"):
        await run(fake, context(height=2048))
    with pytest.raises(InvalidInput, match="preset_style must be"):
        await run(fake, context(preset_style="WATERCOLOUR"))
    assert fake.faults.requests == []


async def test_provider_validation_errors_are_invalid_input(fake: LeonardoFake) -> None:
    fake.models = {"some-other-model"}
    with pytest.raises(InvalidInput, match=f"model {PHOENIX} not found"):
        await run(fake, context())


async def test_rate_limits_and_outages_are_retryable(fake: LeonardoFake) -> None:
    fake.faults.inject(Injected(429, {"error": "rate limit exceeded"}, {"Retry-After": "12"}))
    with pytest.raises(Retryable) as limited:
        await run(fake, context())
    assert limited.value.retry_after == 12 and "rate limit" in limited.value.message

    # An outage while polling: the generation id is already recorded for the retry.
    fake.poll_failures.append(Injected(502, {"error": "bad gateway", "code": "unexpected"}))
    ctx = context()
    with pytest.raises(Retryable, match="bad gateway"):
        await run(fake, ctx)
    assert len(ctx.request_ids) == 1


async def test_a_wrong_key_is_fatal_and_never_appears_in_errors(fake: LeonardoFake) -> None:
    with pytest.raises(Fatal, match="Authentication hook unauthorized") as wrong:
        await run(fake, context(), key="leo-wrong-key-777")
    assert "leo-wrong-key-777" not in str(wrong.value)
    fake.faults.inject(Injected(401, {"error": f"key {KEY} revoked", "code": "access-denied"}))
    with pytest.raises(Fatal) as revoked:
        await run(fake, context())
    assert KEY not in str(revoked.value)


async def test_cancelling_deletes_the_pending_generation(fake: LeonardoFake) -> None:
    fake.pending_polls = 10_000
    ctx = context()
    await cancel_when(run(fake, ctx), lambda: bool(ctx.progress_reports))
    assert fake.deleted == ctx.request_ids and len(fake.deleted) == 1


async def test_check_probes_the_account(fake: LeonardoFake) -> None:
    assert await make_adapter(fake, key="").check() == "credentials missing: set LEONARDO_API_KEY"
    async with (
        aclosing(make_adapter(fake)) as good,
        aclosing(make_adapter(fake, key="leo-nope")) as wrong,
    ):
        assert await good.check() == ""
        assert "unauthorized" in await wrong.check()
