"""The Stability adapter against a fake Stable Image API on loopback (real HTTP, real images)."""

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
from services.providers.registry import build_adapter
from services.providers.stability import StabilityAdapter
from tests.fakes.server import Injected
from tests.fakes.stability import StabilityFake
from tests.providers.harness import FakeContext, cancel_when, hosted, provider_config, run_once

KEY = "sk-stability-secret-0123456789"
T2I = job_pb2.TASK_TEXT_TO_IMAGE
I2I = job_pb2.TASK_IMAGE_TO_IMAGE
MODELS = {"text-to-image": "core", "image-to-image": "sd3.5-large"}


def photo(size: tuple[int, int] = (80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 160, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def fake() -> AsyncIterator[StabilityFake]:
    async with hosted(StabilityFake(api_key=KEY)) as fake:
        yield fake


def make_adapter(
    fake: StabilityFake, key: str = KEY, models: dict[str, str] = MODELS, **options: Any
) -> StabilityAdapter:
    config = provider_config(
        "stability", fake.url, key, models, key_env="STABILITY_API_KEY", options=options
    )
    return StabilityAdapter(config)


def context(
    task: job_pb2.Task.ValueType = T2I, prompt: str = "a paper boat", **parameters: Any
) -> FakeContext:
    inputs = [parameters.pop("image")] if "image" in parameters else []
    return FakeContext(
        task, prompt, parameters, inputs, provider="stability", input_media_type="image/png"
    )


async def run(fake: StabilityFake, ctx: FakeContext, **kwargs: Any) -> Any:
    return await run_once(make_adapter(fake, **kwargs), ctx)


def test_describe_declares_stability_values() -> None:
    config = ProviderConfig(name="stability", family="stability", models=MODELS)
    provider = StabilityAdapter(config).describe()
    assert sorted(provider.tasks) == sorted([T2I, I2I])
    specs = {p.name: p for p in provider.parameters}
    assert "21:9" in specs["aspect_ratio"].allowed_values
    assert list(specs["aspect_ratio"].tasks) == [T2I]
    assert list(specs["output_format"].allowed_values) == ["png", "jpeg", "webp"]
    assert "neon-punk" in specs["style_preset"].allowed_values
    assert specs["seed"].maximum == 4294967294


def test_the_shipped_catalog_builds_it_with_its_tasks() -> None:
    catalog = load_catalog(None, {})
    adapter = build_adapter("stability", catalog)
    assert isinstance(adapter, StabilityAdapter)
    assert sorted(adapter.describe().tasks) == sorted([T2I, I2I])
    assert catalog["stability"].missing_key()  # a key is needed, and none is set here


async def test_core_text_to_image_returns_real_png_bytes(fake: StabilityFake) -> None:
    ctx = context(aspect_ratio="16:9", style_preset="origami", seed=5, negative_prompt="rain")
    result = await run(fake, ctx)

    [output] = result.outputs
    assert output.media_type == "image/png" and output.filename == "image.png"
    assert Image.open(io.BytesIO(output.data)).size == (96, 54)
    [(endpoint, fields, image)] = fake.generations
    assert endpoint == "core" and image is None
    assert fields == {
        "prompt": "a paper boat",
        "output_format": "png",
        "seed": "5",
        "negative_prompt": "rain",
        "style_preset": "origami",
        "aspect_ratio": "16:9",
    }
    request = fake.faults.requests[0]
    assert request.headers["accept"] == "image/*"
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert ctx.request_ids == []  # synchronous: nothing to resume


async def test_json_responses_are_decoded(fake: StabilityFake) -> None:
    result = await run(fake, context(output_format="jpeg"), json_responses=True)
    [output] = result.outputs
    assert output.media_type == "image/jpeg" and output.filename == "image.jpg"
    assert Image.open(io.BytesIO(output.data)).format == "JPEG"
    assert fake.faults.requests[0].headers["accept"] == "application/json"


async def test_sd3_image_to_image_sends_the_input_and_strength(fake: StabilityFake) -> None:
    source = photo((80, 60))
    result = await run(fake, context(I2I, "in autumn colours", image=source, strength=0.4))
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (80, 60)
    [(endpoint, fields, image)] = fake.generations
    assert endpoint == "sd3" and image == source
    assert fields["mode"] == "image-to-image" and fields["model"] == "sd3.5-large"
    assert fields["strength"] == "0.4" and "aspect_ratio" not in fields


async def test_ultra_image_to_image_has_no_mode_field(fake: StabilityFake) -> None:
    models = {"image-to-image": "ultra"}
    await run(fake, context(I2I, "sharper", image=photo()), models=models)
    [(endpoint, fields, _)] = fake.generations
    assert endpoint == "ultra" and "mode" not in fields and "model" not in fields


async def test_core_cannot_be_configured_for_image_to_image(fake: StabilityFake) -> None:
    with pytest.raises(Fatal, match="no image-to-image"):
        await run(fake, context(I2I, image=photo()), models={"image-to-image": "core"})


async def test_bad_parameters_are_rejected_before_any_request(fake: StabilityFake) -> None:
    with pytest.raises(InvalidInput, match=r"aspect_ratio must be .*16:9, 1:1, 21:9"):
        await run(fake, context(aspect_ratio="7:3"))
    with pytest.raises(InvalidInput, match="output_format must be"):
        await run(fake, context(output_format="gif"))
    with pytest.raises(InvalidInput, match="seed must be"):
        await run(fake, context(seed=-1))
    with pytest.raises(InvalidInput, match="style_preset is only offered by Stable Image Core"):
        await run(fake, context(I2I, image=photo(), style_preset="anime"))
    assert fake.faults.requests == []


async def test_provider_validation_errors_are_invalid_input(fake: StabilityFake) -> None:
    with pytest.raises(InvalidInput, match="image: could not be decoded"):
        await run(fake, context(I2I, image=b"not an image at all"))


async def test_moderation_and_filtered_outputs_are_invalid_input(fake: StabilityFake) -> None:
    with pytest.raises(InvalidInput, match="flagged by our content moderation") as refused:
        await run(fake, context(prompt="something forbidden"))
    assert refused.value.code == "content_moderation"
    with pytest.raises(InvalidInput, match="filtered") as filtered:
        await run(fake, context(prompt="please blurme"))
    assert filtered.value.code == "content_filtered"
    with pytest.raises(InvalidInput, match="filtered"):
        await run(fake, context(prompt="please blurme"), json_responses=True)


async def test_rate_limits_and_outages_are_retryable(fake: StabilityFake) -> None:
    limited = {"id": "x", "name": "rate_limit_exceeded", "errors": ["You have exceeded 150 req"]}
    fake.faults.inject(Injected(429, limited, {"Retry-After": "60"}))
    with pytest.raises(Retryable) as error:
        await run(fake, context())
    assert error.value.retry_after == 60 and "exceeded 150" in error.value.message
    fake.faults.inject(Injected(500, {"id": "y", "name": "internal_error", "errors": ["boom"]}))
    with pytest.raises(Retryable, match="boom"):
        await run(fake, context())


async def test_a_wrong_key_is_fatal_and_never_appears_in_errors(fake: StabilityFake) -> None:
    with pytest.raises(Fatal, match="authorization: invalid") as wrong:
        await run(fake, context(), key="sk-wrong-key-5150")
    assert "sk-wrong-key-5150" not in str(wrong.value)
    echoed = {"id": "z", "name": "forbidden", "errors": [f"key {KEY} is disabled"]}
    fake.faults.inject(Injected(403, echoed))
    with pytest.raises(Fatal) as disabled:
        await run(fake, context())
    assert KEY not in str(disabled.value) and "***" in str(disabled.value)


async def test_cancelling_hangs_up_on_the_generation(fake: StabilityFake) -> None:
    fake.latency = 5.0
    await cancel_when(
        run(fake, context()),
        lambda: bool(fake.generations),
        afterwards=lambda: fake.abandoned == 1,
    )


async def test_check_probes_the_account(fake: StabilityFake) -> None:
    assert await make_adapter(fake, key="").check() == "credentials missing: set STABILITY_API_KEY"
    async with (
        aclosing(make_adapter(fake)) as good,
        aclosing(make_adapter(fake, key="sk-nope")) as wrong,
    ):
        assert await good.check() == ""
        assert "authorization: invalid" in await wrong.check()
