"""A worker's start-up order, against a real JetStream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from services.common.bus import Bus
from services.providers.app import running_worker
from services.providers.registration import Registration
from services.providers.settings import Settings
from tests.infra import start_failure


async def test_the_job_consumer_exists_before_the_worker_says_it_is_live(
    nats_url: str, nats_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A router that sees a live worker reads its consumer for the queue depth; finding
    # none, it cannot hold jobs back, so the consumer must come first.
    bus = Bus(nats_prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    seen: list[bool] = []
    announce: Callable[..., Awaitable[None]] = Registration.announce

    async def checked(self: Registration, *, stopping: bool = False) -> None:
        if not seen:
            try:
                await js.consumer_info(bus.jobs_stream, bus.worker_consumer("sandbox"))
                seen.append(True)
            except NotFoundError:
                seen.append(False)
        await announce(self, stopping=stopping)

    monkeypatch.setattr(Registration, "announce", checked)
    env = {
        "GENMESH_NATS_URL": nats_url,
        "GENMESH_NATS_PREFIX": nats_prefix,
        "GENMESH_WORKER_PROVIDERS": "sandbox",
        "GENMESH_STORAGE_ADDR": "127.0.0.1:1",
    }
    try:
        async with running_worker(Settings.from_env(env), env):
            pass
    finally:
        await nc.close()
    assert seen == [True]


def instance(name: str, family: str, extra: str = "") -> str:
    return f'[[providers]]\nname = "{name}"\nfamily = "{family}"\n{extra}\n'


# Catalog file, instances served, and what the worker says after "cannot start: ".
CANNOT_START = {
    "unreadable": (
        "garbage [[",
        "sandbox",
        "cannot read provider catalog {path}: Expected '=' after a key",
    ),
    "not-in-catalog": (
        instance("s", "sandbox"),
        "s,nope",
        "provider 'nope' is not in the catalog; known: s",
    ),
    "unknown-family": (
        instance("n", "nope"),
        "n",
        "provider 'n': unknown provider family 'nope'; known: ",
    ),
    "unknown-option": (
        instance("o", "openai_compatible", "options = { colour = 1 }"),
        "o",
        "{path}: provider 'o': unknown openai_compatible option 'colour'; known: app_title, ",
    ),
    "misspelt-option": (
        instance("r", "replicate", "options = { max_wiat = 5 }"),
        "r",
        "{path}: provider 'r': unknown replicate option 'max_wiat' (did you mean 'max_wait'?); "
        "known: data_uri_limit, health_ttl, max_prompt_length, max_wait, wait",
    ),
    "not-a-number": (
        instance("f", "fal", 'options = { max_wait = "ten" }'),
        "f",
        "{path}: provider 'f': options.max_wait must be a number >= 0, got 'ten'",
    ),
    "not-a-whole-number": (
        instance("e", "espeak", "options = { max_chars = 2.5 }"),
        "e",
        "{path}: provider 'e': options.max_chars must be an integer >= 0, got 2.5",
    ),
    "not-finite": (
        instance("o", "openai_compatible", "options = { check_ttl = inf }"),
        "o",
        "{path}: provider 'o': options.check_ttl must be a number >= 0, got inf",
    ),
    "out-of-range": (
        instance("s", "sandbox", "options = { fail_rate = 5 }"),
        "s",
        "{path}: provider 's': options.fail_rate must be a number (>= 0, <= 1), got 5",
    ),
    "bad-draft": (
        instance("s", "sandbox", "draft = { colour = 1 }"),
        "s",
        "provider 's': draft sets undeclared parameters ['colour']",
    ),
    **{
        f"catalog-{case}": (instance("s", "sandbox", line), "s", f"{{path}}: provider 's': {said}")
        for case, line, said in [
            ("not-a-number", 'timeout = "x"', "timeout must be a number > 0, got 'x'"),
            (
                "out-of-range",
                "concurrency = -1",
                "concurrency must be an integer from 0 to 2147483647, got -1",
            ),
            (
                "not-an-integer",
                "max_queue = 2.5",
                "max_queue must be an integer from 0 to 2147483647, got 2.5",
            ),
            ("bad-cost", 'cost = { default = "cheap" }', "cost.default must be a number >= 0"),
            ("not-a-table", 'options = "fast"', "options must be a table, got 'fast'"),
        ]
    },
    "misspelt-table": (
        '[[provider]]\nname = "s"\nfamily = "sandbox"\n',
        "s",
        "{path}: unknown top-level keys ['provider']; instances are [[providers]]",
    ),
    **{
        f"{family}-{option}": (
            instance("p", family, f'options = {{ {option} = "soon" }}'),
            "p",
            f"{{path}}: provider 'p': options.{option} must be a number >= 0, got 'soon'",
        )
        for family, option in [
            ("pollo", "max_wait"),
            ("leonardo", "max_wait"),
            ("runware", "max_wait"),
            ("comfyui", "preview_interval"),
            ("gemini", "progress_interval"),
        ]
    },
}


@pytest.mark.parametrize(("catalog", "serve", "said"), CANNOT_START.values(), ids=CANNOT_START)
def test_a_worker_that_cannot_start_as_configured_says_why_in_one_line(
    tmp_path: Path, catalog: str, serve: str, said: str
) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(catalog)
    settings = {"GENMESH_PROVIDERS_FILE": str(path), "GENMESH_WORKER_PROVIDERS": serve}
    stderr = start_failure("services.providers", settings)
    assert f"cannot start: {said.format(path=path)}" in stderr, stderr
    assert "Traceback" not in stderr


# Instances served and what a bug's traceback ends with (see broken_family.py).
BUGS = {
    "in-a-factory": (
        "b",
        "in broken\n    int(config.name)",
        "ValueError: invalid literal for int() with base 10: 'b'",
    ),
    "in-an-adapter-modules-imports": (
        "m",
        "from services.providers.htp import bearer",
        "ModuleNotFoundError: No module named 'services.providers.htp'",
    ),
}


def start_broken(tmp_path: Path, catalog: str, serve: str, uninstalled: str = "") -> str:
    """What a worker (knowing broken_family.py's families, without the modules `uninstalled`
    names) that fails to start writes to stderr."""
    path = tmp_path / "providers.toml"
    path.write_text(catalog)
    settings = {
        "GENMESH_PROVIDERS_FILE": str(path),
        "GENMESH_WORKER_PROVIDERS": serve,
        "UNINSTALLED": uninstalled,
    }
    return start_failure("tests.providers.broken_family", settings)


@pytest.mark.parametrize(("serve", "where", "error"), BUGS.values(), ids=BUGS)
def test_a_bug_in_an_adapter_keeps_its_traceback(
    tmp_path: Path, serve: str, where: str, error: str
) -> None:
    stderr = start_broken(tmp_path, instance("b", "broken") + instance("m", "misspelt"), serve)
    assert "Traceback" in stderr and where in stderr, stderr
    assert error in stderr
    assert "cannot start" not in stderr


def test_a_missing_package_is_one_line_saying_what_to_install(tmp_path: Path) -> None:
    stderr = start_broken(tmp_path, instance("c", "comfyui"), "c", uninstalled="websockets")
    said = "provider 'c': its adapter needs the Python module 'websockets', which is not installed"
    assert f"cannot start: {said}: pip install websockets" in stderr, stderr
    assert "Traceback" not in stderr


def test_a_package_too_old_for_an_adapter_is_one_line_saying_to_upgrade(tmp_path: Path) -> None:
    # websockets before 13 has no websockets.asyncio, which the comfyui adapter imports.
    catalog = instance("c", "comfyui")
    stderr = start_broken(tmp_path, catalog, "c", uninstalled="websockets.asyncio")
    assert "cannot start: provider 'c': its adapter needs a newer websockets" in stderr, stderr
    assert "pip install -U websockets" in stderr
    assert "Traceback" not in stderr


def test_auto_passes_over_a_missing_package_but_not_a_bug(tmp_path: Path) -> None:
    catalog = instance("c", "comfyui") + instance("m", "misspelt")
    stderr = start_broken(tmp_path, catalog, "auto", uninstalled="websockets")
    assert "not serving provider 'c': its adapter needs the Python module 'websockets'" in stderr
    assert "Traceback" in stderr, stderr
    assert "ModuleNotFoundError: No module named 'services.providers.htp'" in stderr
