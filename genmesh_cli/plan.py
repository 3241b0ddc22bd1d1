"""What `genmesh up` starts: every child's command, addresses, ports and environment,
decided from the flags before anything starts."""

from __future__ import annotations

import argparse
import importlib.util
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from genmesh_cli.client import CliError


@dataclass(frozen=True)
class Service:
    """One child process: how to run it and how to tell that it is ready."""

    name: str
    module: str
    # What the service itself listens on (its GENMESH_LISTEN); "" for none.
    listen: str = ""
    # Where this machine reaches it (a wildcard listen address becomes loopback).
    address: str = ""
    # "grpc": grpc.health.v1 Check; "http": GET /healthz; "": started is ready.
    probe: str = "grpc"
    tier: int = 0
    # Shown in the endpoint table.
    about: str = ""


@dataclass(frozen=True)
class Plan:
    """Everything `up` will start, decided before anything starts."""

    data_dir: Path
    services: list[Service]
    env: dict[str, str]
    # Empty: start a private nats-server on nats_port.
    external_nats_url: str
    nats_port: int

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def nats_url(self) -> str:
        return self.external_nats_url or f"nats://127.0.0.1:{self.nats_port}"

    def tiers(self) -> list[list[Service]]:
        levels = sorted({s.tier for s in self.services})
        return [[s for s in self.services if s.tier == level] for level in levels]

    def child_env(self, service: Service) -> dict[str, str]:
        env = dict(self.env)
        env["GENMESH_LISTEN"] = service.listen
        return env


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reach_host(host: str) -> str:
    """Where a client on this machine connects when a service listens on `host`."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def gateway_available() -> bool:
    """True when the HTTP bridge is installed (`python -m gateway` would run)."""
    try:
        return importlib.util.find_spec("gateway.__main__") is not None
    except ImportError:
        return False


# Seconds a stopping worker needs besides waiting for its jobs: to stop fetching, hand
# unfinished jobs back and close its connections.
WORKER_STOP_MARGIN = 4.0


def worker_drain_timeout(stop_timeout: float, env: Mapping[str, str]) -> str:
    """GENMESH_WORKER_DRAIN_TIMEOUT for up's worker: the one set (10 s by default), cut so the
    worker stops by itself within `stop_timeout`. Killed instead, it hands nothing back, and
    its jobs wait out the ack wait (30 s) after the next start."""
    fits = max(0.0, stop_timeout - WORKER_STOP_MARGIN)
    try:
        wanted = float(env.get("GENMESH_WORKER_DRAIN_TIMEOUT", "10"))
    except ValueError:
        return env["GENMESH_WORKER_DRAIN_TIMEOUT"]  # the worker's own start-up says what is wrong
    return f"{min(wanted, fits):g}"


def make_plan(args: argparse.Namespace, env: Mapping[str, str]) -> Plan:
    """Decide addresses, ports and environment for every child from the flags and `env`."""
    host = args.host.strip("[]")
    near = reach_host(host)
    data_dir = args.data_dir.expanduser().resolve()
    try:
        worker_port = args.worker_port or free_port(near)
    except OSError as error:  # a host that is no name or no address of this machine
        raise CliError(f"cannot listen on --host {args.host}: {error}") from None
    # Every provider usable here: the offline ones, and those whose key is set.
    providers = env.get("GENMESH_WORKER_PROVIDERS") or "auto"

    def service(name: str, module: str, port: int, probe: str, tier: int, about: str) -> Service:
        return Service(
            name=name,
            module=module,
            listen=join_host_port(host, port),
            address=join_host_port(near, port),
            probe=probe,
            tier=tier,
            about=about,
        )

    services = [
        service("storage", "services.storage", args.storage_port, "grpc", 1, "AssetService"),
        service("prompt", "services.prompt", args.prompt_port, "grpc", 1, "PromptService"),
        service(
            "router",
            "services.router",
            args.grpc_port,
            "grpc",
            2,
            "GenerateService, JobService, ProviderService",
        ),
        service(
            "worker",
            "services.providers",
            worker_port,
            "grpc",
            3,
            f"providers: {providers} (health only)",
        ),
    ]
    if not args.no_gateway and gateway_available():
        services.append(
            service("gateway", "gateway", args.http_port, "http", 3, "REST, WebSocket, web UI")
        )
    by_name = {s.name: s for s in services}
    external = env.get("GENMESH_NATS_URL", "")
    nats_port = 0 if external else free_port()
    child_env = dict(env)
    child_env.update(
        {
            "GENMESH_DATA_DIR": str(data_dir),
            "GENMESH_NATS_URL": external or f"nats://127.0.0.1:{nats_port}",
            "GENMESH_STORAGE_ADDR": by_name["storage"].address,
            "GENMESH_PROMPT_ADDR": by_name["prompt"].address,
            "GENMESH_ROUTER_ADDR": by_name["router"].address,
            # Logs reach the file as they happen, so a crash's last words are in the tail.
            "PYTHONUNBUFFERED": "1",
            "GENMESH_WORKER_PROVIDERS": providers,
            "GENMESH_WORKER_DRAIN_TIMEOUT": worker_drain_timeout(args.stop_timeout, env),
        }
    )
    return Plan(data_dir, services, child_env, external, nats_port)
