"""A whole mesh for end-to-end tests: storage, prompt, router and workers, on real NATS
and a real database, in-process or as real subprocesses (for crash and restart tests)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.v1 import (
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    provider_service_pb2,
    provider_service_pb2_grpc,
)
from services.prompt.app import running_prompt
from services.prompt.settings import Settings as PromptSettings
from services.providers.app import Worker, running_worker
from services.providers.runtime import ProviderWorker
from services.providers.settings import Settings as WorkerSettings
from services.router.app import Router, running_router
from services.router.settings import Settings as RouterSettings
from services.storage.app import running_storage
from services.storage.client import AssetClient
from services.storage.settings import Settings as StorageSettings
from tests.conftest import Database
from tests.infra import eventually, reserved_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mesh:
    env: dict[str, str]
    data_dir: Path
    router_channel: grpc.aio.Channel
    storage_channel: grpc.aio.Channel
    workers: list[Worker] = field(default_factory=list)
    router_proc: subprocess.Popen[bytes] | None = None
    # The router, when it runs in-process.
    router: Router | None = None

    async def restart_router(self, sig: int = signal.SIGKILL) -> None:
        """Stop the subprocess router with `sig` and start a new one on the same address."""
        assert self.router_proc is not None, "the router runs in-process"
        await stop_process(self.router_proc, sig)
        address = self.env["GENMESH_ROUTER_ADDR"]
        self.router_proc = start_process("services.router", {**self.env, "GENMESH_LISTEN": address})
        await wait_serving(address)

    @property
    def generate(self) -> generate_service_pb2_grpc.GenerateServiceStub:
        return generate_service_pb2_grpc.GenerateServiceStub(self.router_channel)

    @property
    def jobs(self) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(self.router_channel)

    @property
    def providers(self) -> provider_service_pb2_grpc.ProviderServiceStub:
        return provider_service_pb2_grpc.ProviderServiceStub(self.router_channel)

    @property
    def assets(self) -> AssetClient:
        return AssetClient(self.storage_channel)

    async def wait_for_provider(self, name: str = "sandbox", live: bool = True) -> None:
        async def ready() -> bool:
            reply = await self.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
            return any(
                p.name == name and (not live or p.health.live_workers > 0) for p in reply.providers
            )

        await eventually(ready, within=15)

    async def serving(self, workers: int, name: str = "sandbox") -> bool:
        """Whether `workers` live workers serve the provider `name` now."""
        reply = await self.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
        return any(p.name == name and p.health.live_workers == workers for p in reply.providers)

    def provider_worker(self, name: str) -> ProviderWorker:
        """The first worker's runtime for the instance `name`."""
        return next(w for w in self.workers[0].workers if w.adapter.name == name)

    async def get_job(self, job_id: str) -> job_pb2.Job:
        return (await self.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id))).job

    async def finished(
        self, job_id: str, within: float = 60
    ) -> tuple[job_pb2.Job, list[job_pb2.JobEvent]]:
        """Watch the job to its end; the job as GetJob then shows it, and its events."""
        events = await asyncio.wait_for(self.watch(job_id), within)
        return await self.get_job(job_id), events

    async def watch(self, job_id: str, after: int = 0) -> list[job_pb2.JobEvent]:
        """Every event WatchJob sends until the job ends."""
        events = []
        call = self.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)
        )
        async for reply in call:
            if reply.HasField("event"):
                events.append(reply.event)
        return events

    async def watch_all_with_peak(
        self, jobs: Sequence[job_pb2.Job], worker: ProviderWorker
    ) -> tuple[list[list[job_pb2.JobEvent]], int]:
        """Every job's events until it ends, and the most jobs `worker` ran at once meanwhile."""
        peak = 0
        watch = asyncio.gather(*(self.watch(j.id) for j in jobs))
        while not watch.done():
            peak = max(peak, worker.in_flight)
            await asyncio.sleep(0.01)
        return list(await watch), peak

    def worker_env(self, **overrides: str) -> dict[str, str]:
        """A worker's environment: this process's, the mesh's settings, then `overrides`."""
        return {**os.environ, **self.env, **overrides}


def _env(nats_url: str, prefix: str, database: Database, data_dir: Path) -> dict[str, str]:
    storage_db = database.url
    if database.kind == "sqlite":
        # One SQLite file per service, as in the embedded deployment.
        storage_db = f"sqlite:///{data_dir / 'storage.db'}"
    return {
        "GENMESH_NATS_URL": nats_url,
        "GENMESH_NATS_PREFIX": prefix,
        "GENMESH_DATA_DIR": str(data_dir),
        "GENMESH_DATABASE_URL": database.url,
        "GENMESH_DATABASE_SCHEMA": database.schema,
        "GENMESH_STORAGE_DATABASE_URL": storage_db,
        "GENMESH_SHUTDOWN_GRACE": "1",
        "GENMESH_WORKER_ACK_WAIT": "30",
        "GENMESH_WORKER_DRAIN_TIMEOUT": "2",
        "GENMESH_LOG_LEVEL": "WARNING",
    }


@asynccontextmanager
async def running_mesh(
    *,
    nats_url: str,
    prefix: str,
    database: Database,
    data_dir: Path,
    workers: int = 1,
    router_in_process: bool = True,
    worker_overrides: Mapping[str, str] | None = None,
    catalog: str = "",
    providers: Sequence[str] = ("sandbox",),
    router_overrides: Mapping[str, str] | None = None,
    storage_overrides: Mapping[str, str] | None = None,
) -> AsyncIterator[Mesh]:
    """Storage and prompt in-process; the router in-process or as a subprocess; N workers.

    `catalog`, when given, is written to data_dir/providers.toml and the workers serve its
    instances named in `providers`; start-up waits until each of `providers` is live.
    `worker_overrides` reach the workers' settings and environment (provider keys),
    `router_overrides` the router's and `storage_overrides` storage's."""
    env = {**_env(nats_url, prefix, database, data_dir), **(router_overrides or {})}
    worker_overrides = {**(worker_overrides or {})}
    if catalog:
        path = data_dir / "providers.toml"
        path.write_text(catalog)
        worker_overrides = {
            "GENMESH_PROVIDERS_FILE": str(path),
            "GENMESH_WORKER_PROVIDERS": ",".join(providers),
            **worker_overrides,
        }
    async with _closed_within(SHUTDOWN_LIMIT) as stack:
        storage_env = {
            **env,
            "GENMESH_DATABASE_URL": env["GENMESH_STORAGE_DATABASE_URL"],
            "GENMESH_LISTEN": "127.0.0.1:0",
            **(storage_overrides or {}),
        }
        storage = await stack.enter_async_context(
            running_storage(StorageSettings.from_env(storage_env))
        )
        prompt = await stack.enter_async_context(
            running_prompt(PromptSettings.from_env({**env, "GENMESH_LISTEN": "127.0.0.1:0"}))
        )
        env["GENMESH_STORAGE_ADDR"] = storage.address
        env["GENMESH_PROMPT_ADDR"] = prompt.address
        router: Router | None = None
        if router_in_process:
            router = await stack.enter_async_context(
                running_router(RouterSettings.from_env({**env, "GENMESH_LISTEN": "127.0.0.1:0"}))
            )
            env["GENMESH_ROUTER_ADDR"] = router.server.address
        else:
            # Held for the mesh's life: restart_router brings the router back where every
            # client looks, and no other process can be handed the port in between.
            port = stack.enter_context(reserved_port(any_server=True))
            env["GENMESH_ROUTER_ADDR"] = f"127.0.0.1:{port}"
            proc = start_process(
                "services.router", {**env, "GENMESH_LISTEN": env["GENMESH_ROUTER_ADDR"]}
            )
            await wait_serving(env["GENMESH_ROUTER_ADDR"])
        router_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(env["GENMESH_ROUTER_ADDR"])
        )
        storage_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(storage.address)
        )
        mesh = Mesh(env, data_dir, router_channel, storage_channel, router=router)
        if not router_in_process:
            mesh.router_proc = proc

            async def stop_router() -> None:
                if mesh.router_proc is not None:
                    await stop_process(mesh.router_proc)

            stack.push_async_callback(stop_router)
        for _ in range(workers):
            worker_env = mesh.worker_env(**worker_overrides)
            settings = WorkerSettings.from_env(worker_env)
            mesh.workers.append(
                await stack.enter_async_context(running_worker(settings, worker_env))
            )
        if workers:
            for name in providers:
                await mesh.wait_for_provider(name)
        yield mesh


log = logging.getLogger(__name__)

# Seconds the mesh may take to shut down before the test fails; its bounded waits (worker
# drain, server grace, NATS drains) add up to well under this.
SHUTDOWN_LIMIT = 45.0
# Seconds after which a shutdown still running is logged with where every task waits.
STALL_REPORT_AFTER = 20.0


@asynccontextmanager
async def _closed_within(seconds: float) -> AsyncIterator[AsyncExitStack]:
    """An exit stack whose closing fails the test after `seconds`, rather than hanging it
    until pytest's timeout; a slow one first logs where every task waits."""
    stack = AsyncExitStack()
    try:
        yield stack
    finally:
        closing = asyncio.current_task()
        watchdog = asyncio.get_running_loop().call_later(
            STALL_REPORT_AFTER, lambda: log.error("shutdown is slow:\n%s", await_chains(closing))
        )
        try:
            async with asyncio.timeout(seconds):
                await stack.aclose()
        except TimeoutError:
            raise AssertionError(f"the mesh did not shut down within {seconds:.0f} s") from None
        finally:
            watchdog.cancel()


def await_chains(first: asyncio.Task[object] | None) -> str:
    """Where each task waits, innermost await last, `first` leading; then every suspended
    async generator (an `asend` hides the generator it drives from the task's chain)."""
    lines = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t is not first):
        lines.append(f"{task.get_name()}:")
        lines.extend(_chain(task.get_coro()))
    for obj in gc.get_objects():
        if isinstance(obj, types.AsyncGeneratorType) and obj.ag_await is not None:
            lines.append(f"async generator {obj.ag_code.co_name}:")
            lines.extend(_chain(obj))
    return "\n".join(lines)


def _chain(awaitable: object) -> list[str]:
    lines = []
    while awaitable is not None:
        frame = (
            getattr(awaitable, "cr_frame", None)
            or getattr(awaitable, "ag_frame", None)
            or getattr(awaitable, "gi_frame", None)
        )
        if frame is not None:
            code = frame.f_code
            lines.append(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}")
        else:
            lines.append(f"  {awaitable!r}")
        awaitable = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "ag_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
        )
    return lines


def start_process(
    module: str, env: Mapping[str, str], stderr: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m module` with exactly these GENMESH_* settings over the current environment;
    its log (stderr) goes to `stderr` when given, else to the test's."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    full.update(env)
    return subprocess.Popen([sys.executable, "-m", module], env=full, cwd=ROOT, stderr=stderr)


async def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    for _ in range(200):
        if proc.poll() is not None:
            return proc.returncode
        await asyncio.sleep(0.05)
    proc.kill()
    return proc.wait()


async def wait_serving(address: str, within: float = 20.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, within=within)
