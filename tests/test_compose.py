"""compose.yaml runs real modules with real settings, health-gated; the healthcheck works."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import shlex
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from grpc_health.v1 import health_pb2

from services.common.healthcheck import check
from services.prompt.app import running_prompt
from services.prompt.servicer import SERVICE_NAME
from services.prompt.settings import Settings as PromptSettings
from tests.infra import free_port

ROOT = Path(__file__).resolve().parents[1]
INFRA = frozenset({"nats", "postgres"})
HEALTHCHECK_MODULE = "services.common.healthcheck"
# Ports clients and docs rely on.
PUBLISHED = {"router": 50051, "storage": 50052, "prompt": 50053, "gateway": 8080}


@cache
def compose() -> dict[str, Any]:
    with (ROOT / "compose.yaml").open() as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


APPS = sorted(set(services()) - INFRA)


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def python_modules(command: str | list[str]) -> list[str]:
    """X for every `python -m X` in a command."""
    args = argv(command)
    return [
        args[i + 1]
        for i, arg in enumerate(args[:-1])
        if arg == "-m" and i > 0 and Path(args[i - 1]).name.startswith("python")
    ]


def app_module(name: str) -> str:
    [module] = python_modules(services()[name]["command"])
    return module


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def listen_port(name: str) -> int:
    return int(environment(services()[name])["GENMESH_LISTEN"].rpartition(":")[2])


def healthcheck_test(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    args = argv(test)
    # ["CMD", ...] runs argv directly; ["CMD-SHELL", "..."] and a plain string go to a shell.
    if args[0] == "CMD":
        return args[1:]
    if args[0] == "CMD-SHELL":
        return shlex.split(" ".join(args[1:]))
    return args


def package_exists(top: str) -> bool:
    """True for a real package; an empty directory is only a namespace and not written yet."""
    spec = importlib.util.find_spec(top)
    return spec is not None and spec.origin is not None


def skip_unwritten_gateway(module: str) -> None:
    top = module.partition(".")[0]
    if top == "gateway" and not package_exists(top):
        pytest.skip("the gateway package (gateway-http/gateway) is not written yet")


def runnable(module: str) -> bool:
    """Whether `python -m module` can run: a plain module, or a package with a __main__."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return True


# --- the file -------------------------------------------------------------------------------


def test_infrastructure() -> None:
    nats, postgres = services()["nats"], services()["postgres"]
    assert nats["image"].startswith("nats:2.11")
    args = argv(nats["command"])
    assert "-js" in args
    assert args[args.index("-sd") + 1] == "/data"
    assert args[args.index("-m") + 1] == "8222"
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert "http://127.0.0.1:8222/healthz?js-enabled-only=true" in healthcheck_test(nats)
    assert postgres["image"] == "postgres:16"
    assert healthcheck_test(postgres)[0] == "pg_isready"


@pytest.mark.parametrize("name", APPS)
def test_service_has_a_healthcheck(name: str) -> None:
    healthcheck = services()[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable")
    assert healthcheck_test(services()[name])


@pytest.mark.parametrize("name", APPS)
def test_command_modules_exist(name: str) -> None:
    service = services()[name]
    modules = python_modules(service["command"])
    assert len(modules) == 1, f"{name} should run one `python -m ...`"
    modules += python_modules(service["healthcheck"]["test"])
    for module in modules:
        skip_unwritten_gateway(module)
        assert runnable(module), f"{name}: `python -m {module}` has nothing to run"


def test_healthcheck_module_exists() -> None:
    assert runnable(HEALTHCHECK_MODULE)


@pytest.mark.parametrize("name", APPS)
def test_environment_is_settings(name: str) -> None:
    module = app_module(name)
    skip_unwritten_gateway(module)
    settings_class = importlib.import_module(f"{module}.settings").Settings
    env = environment(services()[name])
    assert env, f"{name} gets no GENMESH_* settings"
    values = {}
    for key, value in env.items():
        assert key.startswith("GENMESH_"), f"{name}: {key} is not a genmesh setting"
        field = key.removeprefix("GENMESH_").lower()
        assert field in settings_class.model_fields, f"{name}: {key} is not a field of Settings"
        values[field] = value
    # The values parse too (numbers, paths); model_validate reads no environment.
    settings_class.model_validate(values)


@pytest.mark.parametrize("name", APPS)
def test_listens_on_all_interfaces_and_probes_that_port(name: str) -> None:
    listen = environment(services()[name])["GENMESH_LISTEN"]
    assert listen.startswith("0.0.0.0:"), "other containers must reach it"
    probe = healthcheck_test(services()[name])
    if HEALTHCHECK_MODULE in probe:
        target = probe[probe.index(HEALTHCHECK_MODULE) + 1]
    else:
        [target] = [a for a in " ".join(probe).replace("'", " ").split() if "://" in a]
    assert target.rsplit(":", 1)[-1].split("/")[0] == str(listen_port(name))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_ports(name: str) -> None:
    assert listen_port(name) == PUBLISHED[name]
    assert f"{PUBLISHED[name]}:{PUBLISHED[name]}" in services()[name]["ports"]


@pytest.mark.parametrize("name", APPS)
def test_addresses_point_at_listening_services(name: str) -> None:
    for key, value in environment(services()[name]).items():
        if key.endswith("_ADDR"):
            host, _, port = value.rpartition(":")
            assert host in APPS, f"{name}: {key} names no service"
            assert int(port) == listen_port(host), f"{name}: {key} misses {host}'s port"
        elif key == "GENMESH_NATS_URL":
            assert (urlsplit(value).hostname, urlsplit(value).port) == ("nats", 4222)
        elif key == "GENMESH_DATABASE_URL":
            url = urlsplit(value)
            assert url.scheme == "postgresql+asyncpg"
            assert (url.hostname, url.port) == ("postgres", 5432)
            postgres = environment(services()["postgres"])
            assert (url.username, url.password, url.path) == (
                postgres["POSTGRES_USER"],
                postgres["POSTGRES_PASSWORD"],
                "/" + postgres["POSTGRES_DB"],
            )


@pytest.mark.parametrize("name", sorted(services()))
def test_depends_on_waits_for_health(name: str) -> None:
    depends_on = services()[name].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{name}: list-form depends_on only waits for start"
    for dependency, spec in depends_on.items():
        assert dependency in services(), f"{name} depends on unknown {dependency}"
        if "healthcheck" in services()[dependency]:
            assert spec.get("condition") == "service_healthy", f"{name} -> {dependency}"


def test_clients_start_after_their_servers() -> None:
    for name in APPS:
        env = environment(services()[name])
        needed = {v.rpartition(":")[0] for k, v in env.items() if k.endswith("_ADDR")}
        if "GENMESH_NATS_URL" in env:
            needed.add("nats")
        if "GENMESH_DATABASE_URL" in env:
            needed.add("postgres")
        assert needed <= set(services()[name].get("depends_on", {})), name


def test_one_image_for_every_service() -> None:
    assert {services()[n]["image"] for n in APPS} == {"genmesh:local"}
    assert {services()[n]["build"] for n in APPS} == {"."}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile.splitlines()
    assert "pip install" in dockerfile


def test_workers_scale_out_without_a_published_port() -> None:
    providers = services()["providers"]
    assert providers["deploy"]["replicas"] >= 2
    # Replicas would collide on a fixed host port.
    assert "ports" not in providers


# --- the healthcheck against a real server --------------------------------------------------


async def run_healthcheck(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", HEALTHCHECK_MODULE, *args, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_healthcheck_follows_the_serving_status() -> None:
    settings = PromptSettings.from_env({"GENMESH_LISTEN": "127.0.0.1:0"})
    async with running_prompt(settings) as running:
        assert await run_healthcheck(running.address) == (0, "")
        assert await check(running.address, SERVICE_NAME) is None
        await running.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        code, err = await run_healthcheck(running.address)
        assert code == 1
        assert "NOT_SERVING" in err


async def test_healthcheck_of_an_unknown_service() -> None:
    settings = PromptSettings.from_env({"GENMESH_LISTEN": "127.0.0.1:0"})
    async with running_prompt(settings) as running:
        problem = await check(running.address, "genmesh.v1.NoSuchService")
        assert problem is not None
        assert "NOT_FOUND" in problem


async def test_healthcheck_of_a_closed_port() -> None:
    code, err = await run_healthcheck(f"127.0.0.1:{free_port()}")
    assert code == 1
    assert "UNAVAILABLE" in err


async def test_healthcheck_usage() -> None:
    code, err = await run_healthcheck()
    assert code == 2
    assert "usage" in err
