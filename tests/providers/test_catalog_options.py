"""Catalog `options`, each written to a catalog file and loaded as the worker loads it: whole
numbers stay whole, numbers are finite, and a family refuses any key it does not read."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from services.providers.config import (
    COMMON_OPTIONS,
    DEFAULT_CATALOG,
    CatalogError,
    load_catalog,
)
from services.providers.registry import FAMILIES, build_adapter

ROOT = Path(__file__).parents[2]
INT32_MAX = "from 0 to 2147483647"


def family_class(family: str) -> Any:
    module, _, name = FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), name)


def declared(family: str) -> set[str]:
    return set(family_class(family).option_keys)


def write(tmp_path: Path, family: str, options: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(
        f'[[providers]]\nname = "p"\nfamily = "{family}"\nbase_url = "http://127.0.0.1:9"\n'
        f"options = {{ {options} }}\n"
    )
    return path


def refusal(tmp_path: Path, family: str, options: str) -> str:
    """What a worker serving instance "p" of `family` with these options stops with, after
    the file and instance it names."""
    path = write(tmp_path, family, options)
    with pytest.raises(CatalogError) as refused:
        build_adapter("p", load_catalog(path, {}))
    said = str(refused.value)
    where = f"{path}: provider 'p': "
    assert said.startswith(where) and "\n" not in said, said
    return said.removeprefix(where)


@pytest.mark.parametrize(
    ("family", "key", "what"),
    [
        ("espeak", "max_chars", "an integer >= 0"),
        ("espeak", "piece_chars", "an integer >= 0"),
        ("pillow", "max_pixels", "an integer >= 0"),
        ("replicate", "wait", "an integer >= 0"),
        ("replicate", "data_uri_limit", "an integer >= 0"),
        ("sandbox", "max_prompt_length", f"an integer {INT32_MAX}"),
        ("fal", "max_prompt_length", f"an integer {INT32_MAX}"),
        ("openai_compatible", "max_prompt_length", f"an integer {INT32_MAX}"),
    ],
)
def test_a_whole_number_option_refuses_a_fraction(
    tmp_path: Path, family: str, key: str, what: str
) -> None:
    assert refusal(tmp_path, family, f"{key} = 2.5") == f"options.{key} must be {what}, got 2.5"


def test_a_prompt_limit_must_fit_where_it_is_published(tmp_path: Path) -> None:
    said = refusal(tmp_path, "gemini", "max_prompt_length = 3_000_000_000")
    assert said == f"options.max_prompt_length must be an integer {INT32_MAX}, got 3000000000"


@pytest.mark.parametrize(
    ("family", "option"),
    [
        ("openai_compatible", "progress_interval = inf"),
        ("openai_compatible", "check_ttl = inf"),
        ("openai_compatible", "check_ttl = nan"),
        ("ollama", "progress_interval = inf"),
        ("ollama", "check_ttl = nan"),
        ("ollama", 'check_ttl = "soon"'),
    ],
)
def test_a_number_option_is_finite_in_every_family(
    tmp_path: Path, family: str, option: str
) -> None:
    key, _, value = option.partition(" = ")
    shown = repr(float(value)) if value in ("inf", "nan") else value.replace('"', "'")
    assert refusal(tmp_path, family, option) == f"options.{key} must be a number >= 0, got {shown}"


@pytest.mark.parametrize(
    ("family", "option"),
    [
        ("runpod", 'stream = "false"'),
        ("elevenlabs", 'stream = "false"'),
        ("huggingface", 'wait_for_model = "true"'),
        ("stability", "json_responses = 1"),
        ("openai_compatible", 'check_models = "no"'),
    ],
)
def test_a_flag_option_is_true_or_false(tmp_path: Path, family: str, option: str) -> None:
    [(key, got)] = tomllib.loads(option).items()
    said = refusal(tmp_path, family, option)
    assert said == f"options.{key} must be true or false, got {got!r}"


@pytest.mark.parametrize(
    ("family", "option", "what"),
    [
        ("espeak", "binary = 5", "a non-empty string"),
        ("espeak", 'binary = ""', "a non-empty string"),
        ("pocketsphinx", "hmm = 5", "a string"),
        ("pocketsphinx", "lm = true", "a string"),
        ("pocketsphinx", "dict = []", "a string"),
        ("ollama", "keep_alive = true", "a string"),
        ("openai_compatible", "check_path = 5", "a non-empty string"),
        ("openai_compatible", 'check_path = ""', "a non-empty string"),
        ("openai_compatible", "app_url = false", "a string"),
        ("openai_compatible", "app_title = 1", "a string"),
        (
            "openai_compatible",
            "max_tokens_field = 5",
            "one of 'max_tokens', 'max_completion_tokens'",
        ),
        ("openai_compatible", 'image_response_format = "png"', "one of 'b64_json', 'url'"),
        ("runware", 'output_type = "dataURI"', "one of 'URL', 'base64Data'"),
        ("runware", "output_type = true", "one of 'URL', 'base64Data'"),
    ],
)
def test_a_text_option_is_a_string(tmp_path: Path, family: str, option: str, what: str) -> None:
    [(key, got)] = tomllib.loads(option).items()
    assert refusal(tmp_path, family, option) == f"options.{key} must be {what}, got {got!r}"


def test_comfyui_checks_its_workflows_table_at_start_up(tmp_path: Path) -> None:
    said = refusal(tmp_path, "comfyui", 'workflows = "flow.json"')
    assert said.startswith("options.workflows must be a table"), said


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_refuses_an_option_it_does_not_read(tmp_path: Path, family: str) -> None:
    keys = declared(family) | set(COMMON_OPTIONS)
    hint = " (did you mean 'max_wait'?)" if "max_wait" in keys else ""
    said = refusal(tmp_path, family, "max_wiat = 5")
    assert said == f"unknown {family} option 'max_wiat'{hint}; known: {', '.join(sorted(keys))}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_every_family_takes_a_prompt_limit(tmp_path: Path, family: str) -> None:
    path = write(tmp_path, family, "max_prompt_length = 100")
    adapter = build_adapter("p", load_catalog(path, {}))
    try:
        assert adapter.describe().max_prompt_length == 100
    finally:
        await adapter.aclose()


async def test_every_shipped_instance_builds() -> None:
    catalog = load_catalog(DEFAULT_CATALOG, {})
    for name in catalog:
        adapter = build_adapter(name, catalog)
        await adapter.aclose()


# An option read by key in an adapter's source: option_number("x", ...), option_text("x"),
# options.get("x"), options["x"].
_READ = re.compile(r'(?:option_(?:number|whole|flag|text)\(|options(?:\.get\(|\[))\s*"(\w+)"')


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_option_a_family_reads_is_declared(family: str) -> None:
    module = importlib.import_module(FAMILIES[family].partition(":")[0])
    source = Path(module.__file__ or "")
    files = source.parent.rglob("*.py") if source.name == "__init__.py" else [source]
    read = {key for file in files for key in _READ.findall(file.read_text())}
    assert read - set(COMMON_OPTIONS) <= declared(family)


def test_the_readme_lists_each_familys_options() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.partition("### Family options")[2].partition("\n\n|")[2]
    listed: dict[str, set[str]] = {}
    for row in table.partition("\n\n")[0].splitlines()[2:]:
        families, keys = row.strip("|").split("|")
        for family in re.findall(r"`(\w+)`", families):
            listed[family] = set(re.findall(r"`(\w+)`", keys))
    assert listed == {family: declared(family) for family in FAMILIES}
