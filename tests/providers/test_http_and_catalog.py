"""The shared adapter plumbing: catalog parsing and HTTP failure classification, over real
HTTP to a loopback server."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genmesh.v1 import job_pb2
from services import providers
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.config import DEFAULT_CATALOG, CatalogError, ProviderConfig, load_catalog
from services.providers.http import ProviderHTTP
from services.providers.registry import DEPENDENCIES, FAMILIES, auto_instances
from tests.fakes.server import Faults, Injected, serving

SECRET = "sk-test-secret-123"


def test_shipped_catalog_parses_and_names_known_families() -> None:
    catalog = load_catalog(None, {})
    assert {"sandbox", "openai", "fal", "comfyui"} <= set(catalog)
    assert all(c.family in FAMILIES for c in catalog.values())
    assert catalog["openai"].missing_key() == "credentials missing: set OPENAI_API_KEY"
    assert "openai" not in auto_instances(catalog)
    assert "sandbox" in auto_instances(catalog)


def test_every_package_adapters_import_is_listed_with_what_installs_it() -> None:
    # Only a module in DEPENDENCIES that is missing stops a worker in one line naming what
    # to install; any other missing module is taken for a bug.
    imported: set[str] = set()
    for source in Path(providers.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "genmesh", "services"}
    # The worker imports grpc and nats before any adapter; pocketsphinx is imported only by
    # its decoder process.
    assert third_party - {"grpc", "nats", "pocketsphinx"} == set(DEPENDENCIES)
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = {re.split(r"[<>=!~\[; ]", d)[0] for d in pyproject["project"]["dependencies"]}
    assert set(DEPENDENCIES.values()) <= declared


def test_keys_come_from_the_environment_and_never_reach_repr(tmp_path: Path) -> None:
    catalog = load_catalog(DEFAULT_CATALOG, {"OPENAI_API_KEY": SECRET})
    openai = catalog["openai"]
    assert openai.api_key == SECRET and openai.missing_key() == ""
    assert SECRET not in repr(openai)
    assert openai.model_for(job_pb2.TASK_TEXT_TO_TEXT) == "gpt-4o-mini"
    assert openai.cost_for(job_pb2.TASK_TEXT_TO_IMAGE) == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[[providers]]\nfamily = 'x'\n", "needs a name"),
        ("[[providers]]\nname = 'a'\nbogus = 1\n", "unknown key 'bogus'; known: "),
        (
            "[[providers]]\nname = 'a'\ntimout = 5\n",
            r"unknown key 'timout' \(did you mean 'timeout'\?\)",
        ),
        ("[[providers]]\nname = 'a'\n[[providers]]\nname = 'a'\n", "declared twice"),
        ("[[providers]]\nname = 'a'\nmodels = { 'text-to-music' = 'm' }\n", "unknown task"),
        ("[[providers]\n", "cannot read"),
        ("[[provider]]\nname = 'a'\n", r"unknown top-level keys \['provider'\]"),
        ("providers = ['a']\n", r"providers must be \[\[providers\]\] tables"),
        *[
            (f"[[providers]]\nname = 'a'\n{line}\n", f"provider 'a': {said}")
            for line, said in [
                ("timeout = 'x'", "timeout must be a number > 0, got 'x'"),
                ("timeout = 0", "timeout must be a number > 0, got 0"),
                ("poll_interval = -1.5", "poll_interval must be a number > 0, got -1.5"),
                ("rate_per_second = nan", "rate_per_second must be a number >= 0, got nan"),
                ("rate_per_second = inf", "rate_per_second must be a number >= 0, got inf"),
                ("concurrency = 2.5", "concurrency must be an integer from 0 to 2147483647"),
                ("max_queue = 2147483648", "max_queue must be an integer from 0 to 2147483647"),
                # TOML integers are unbounded here; one past any float is refused, not a crash.
                (f"max_queue = 1{'0' * 400}", "max_queue must be an integer from 0 to 2147"),
                ("max_retries = true", "max_retries must be an integer from 0 to 2147483647"),
                ("attempt_timeout = 1e300", "attempt_timeout must be a number from 0 to 3155"),
                ("cost = { default = '1' }", "cost.default must be a number >= 0, got '1'"),
                ("cost = 0.5", "cost must be a table keyed by task name, got 0.5"),
                ("models = { 'text-to-image' = 1 }", "models.text-to-image must be a model name"),
                ("options = 'x'", "options must be a table, got 'x'"),
                ("api_key_env = 1", "api_key_env must be a string, got 1"),
                ("family = ['sandbox']", "family must be a string"),
            ]
        ],
    ],
)
def test_bad_catalogs_are_rejected_with_the_reason(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=error):
        load_catalog(path, {})


@pytest.mark.parametrize(
    "value", ["ten", -1, float("nan"), float("inf"), True, pytest.param(10**400, id="10**400")]
)
def test_a_number_option_must_be_a_number_at_least_zero(value: object) -> None:
    config = ProviderConfig(name="x", family="fal", options={"max_wait": value})
    said = r"provider 'x': options\.max_wait must be a number >= 0"
    with pytest.raises(CatalogError, match=said):
        config.option_number("max_wait", 1.0)


def test_a_number_option_unset_is_its_default() -> None:
    assert ProviderConfig(name="x", family="fal").option_number("max_wait", 2.5) == 2.5
    config = ProviderConfig(name="x", family="fal", options={"max_wait": 0})
    assert config.option_number("max_wait", 2.5) == 0.0


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Faults]]:
    faults = Faults()

    async def echo(request: Request) -> Response:
        if (injected := await faults.check(request)) is not None:
            return injected
        return JSONResponse({"ok": True, "auth": request.headers.get("authorization")})

    app = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])])
    async with serving(app) as url:
        yield url, faults


async def test_success_and_failures_are_classified(server: tuple[str, Faults]) -> None:
    url, faults = server
    config = ProviderConfig(name="demo", family="x", base_url=url, api_key_env="K", _api_key=SECRET)
    http = ProviderHTTP(config, headers={"Authorization": f"Bearer {SECRET}"})
    try:
        assert (await http.json("GET", "/echo"))["auth"] == f"Bearer {SECRET}"

        faults.inject(Injected(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"}))
        with pytest.raises(Retryable) as retry:
            await http.json("GET", "/echo")
        assert retry.value.retry_after == 7 and "slow down" in retry.value.message

        faults.inject(Injected(503, "upstream overloaded"))
        with pytest.raises(Retryable, match="overloaded"):
            await http.json("GET", "/echo")

        faults.inject(Injected(422, {"detail": [{"msg": "prompt too long"}]}))
        with pytest.raises(InvalidInput, match="prompt too long"):
            await http.json("POST", "/echo", json={})

        # A provider that echoes the key back never gets it into our errors.
        faults.inject(Injected(401, {"error": f"bad key {SECRET}"}))
        with pytest.raises(Fatal) as fatal:
            await http.json("GET", "/echo")
        assert SECRET not in str(fatal.value) and "check K" in fatal.value.message

        faults.inject(Injected(200, b"not json"))
        with pytest.raises(Retryable, match="not JSON"):
            await http.json("GET", "/echo")
    finally:
        await http.aclose()


async def test_timeouts_and_unreachable_hosts_are_retryable(server: tuple[str, Faults]) -> None:
    url, faults = server
    http = ProviderHTTP(ProviderConfig(name="demo", family="x", base_url=url), timeout=0.2)
    try:
        faults.inject(Injected(200, {"late": True}, delay=1.0))
        with pytest.raises(Retryable, match="did not answer in time"):
            await http.json("GET", "/echo")
    finally:
        await http.aclose()
    gone = ProviderHTTP(ProviderConfig(name="gone", family="x", base_url="http://127.0.0.1:9"))
    try:
        with pytest.raises(Retryable, match="cannot reach gone"):
            await gone.json("GET", "/echo")
    finally:
        await gone.aclose()
