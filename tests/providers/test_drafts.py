"""Preview-first drafts: the generic draft-parameter rule, catalog overrides, and a real
smaller sandbox draft."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from genmesh.v1 import job_pb2, provider_service_pb2
from services.providers.base import ConfiguredAdapter
from services.providers.config import CatalogError, ProviderConfig, load_catalog
from services.providers.drafts import Drafts, draft_parameters
from services.providers.registry import build_adapter
from services.providers.sandbox import SandboxAdapter
from tests.providers.harness import FakeContext

T2I, I2V = job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_VIDEO
INT, NUM = provider_service_pb2.PARAMETER_TYPE_INTEGER, provider_service_pb2.PARAMETER_TYPE_NUMBER
STR = provider_service_pb2.PARAMETER_TYPE_STRING


def provider(*params: provider_service_pb2.ParameterSpec) -> provider_service_pb2.Provider:
    return provider_service_pb2.Provider(name="p", tasks=[T2I, I2V], parameters=params)


def spec(name: str, kind: int, minimum: float | None = None) -> provider_service_pb2.ParameterSpec:
    return provider_service_pb2.ParameterSpec(name=name, type=kind, minimum=minimum)  # type: ignore[arg-type]


def test_sizes_shrink_to_a_quarter_in_multiples_of_eight() -> None:
    p = provider(spec("width", INT, 16), spec("height", INT, 16), spec("steps", INT))
    draft = draft_parameters(p, T2I, {"width": 1024, "height": 768, "steps": 30})
    assert draft == {"width": 256, "height": 192, "steps": 30}


def test_sizes_never_go_below_the_declared_minimum() -> None:
    p = provider(spec("width", INT, 64), spec("height", INT, 64))
    assert draft_parameters(p, T2I, {"width": 512, "height": 100}) == {"width": 128, "height": 64}
    # Already at the minimum: nothing would get cheaper, so no draft.
    assert draft_parameters(p, T2I, {"width": 64, "height": 64}) is None


def test_lengths_shorten_and_keep_their_type() -> None:
    p = provider(spec("duration_seconds", NUM, 0.5), spec("num_frames", INT, 8))
    draft = draft_parameters(p, I2V, {"duration_seconds": 6.0, "num_frames": 81})
    assert draft == {"duration_seconds": 1.5, "num_frames": 20}
    assert isinstance(draft["num_frames"], int)
    assert draft_parameters(p, I2V, {"duration_seconds": 1.0}) == {"duration_seconds": 0.5}


def test_nothing_to_shrink_means_no_draft() -> None:
    p = provider(spec("style", STR), spec("width", INT))
    assert draft_parameters(p, T2I, {"style": "sepia"}) is None  # width unset: nothing to cut
    assert draft_parameters(p, T2I, {"width": True}) is None


def test_catalog_overrides_replace_the_rule() -> None:
    p = provider(spec("width", INT, 16), spec("quality", STR))
    draft = draft_parameters(p, T2I, {"width": 1024, "quality": "hd"}, {"quality": "draft"})
    assert draft == {"width": 1024, "quality": "draft"}


def test_catalog_draft_is_checked_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        '[[providers]]\nname = "s"\nfamily = "sandbox"\nmax_retries = 2\n'
        "attempt_timeout = 1.5\ndraft = { width = 64, height = 48 }\n"
    )
    config = load_catalog(path, {})["s"]
    assert (config.max_retries, config.attempt_timeout) == (2, 1.5)
    assert Drafts.for_instance(SandboxAdapter(config), config).overrides == {
        "width": 64,
        "height": 48,
    }
    for bad in ("draft = { colour = 1 }", "draft = { width = 4 }"):
        config = ProviderConfig(name="s", family="sandbox", draft=_toml_table(bad))
        with pytest.raises(ValueError, match="draft"):
            Drafts.for_instance(SandboxAdapter(config), config)
    for bad in ("max_retries = -1", "attempt_timeout = -2", 'draft = "small"'):
        path.write_text(f'[[providers]]\nname = "s"\nfamily = "sandbox"\n{bad}\n')
        with pytest.raises(CatalogError):
            load_catalog(path, {})


def _toml_table(line: str) -> dict[str, object]:
    return dict(tomllib.loads(line)["draft"])


async def test_sandbox_draft_is_a_real_smaller_png_and_keeps_out_of_the_job() -> None:
    adapter = SandboxAdapter()
    ctx = FakeContext(T2I, "a red fox", {"width": 512, "height": 384, "latency_ms": 0})
    output = await Drafts({}).run(adapter, ctx)
    assert output is not None and output.media_type == "image/png"
    image = Image.open(io.BytesIO(output.data))
    assert image.format == "PNG" and image.size == (128, 96)
    # The draft run's own previews and progress are not the job's.
    assert ctx.previews == [] and ctx.progress_reports == []


async def test_a_draft_model_runs_on_a_second_instance_of_the_family() -> None:
    config = ProviderConfig(
        name="o",
        family="openai_compatible",
        base_url="http://127.0.0.1:9",
        models={"text-to-image": "gpt-image-1", "text-to-text": "gpt-4o"},
        draft={"model": "dall-e-2"},
    )
    main = build_adapter("o", {"o": config})
    drafts = Drafts.for_instance(main, config)
    try:
        assert drafts.overrides == {}
        assert isinstance(drafts.adapter, ConfiguredAdapter)
        assert drafts.adapter.config.model_for(T2I) == "dall-e-2"
        assert drafts.adapter.config.model_for(job_pb2.TASK_TEXT_TO_TEXT) == "gpt-4o"
    finally:
        await drafts.aclose()
        await main.aclose()
