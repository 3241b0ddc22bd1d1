"""The router's added latency per job with 20 configured provider instances.

Starts its own mesh: a private nats-server, SQLite (or --database-url), storage and prompt
in this process, the router and one worker serving 20 `sandbox` instances (s00..s19, one
catalog file) as subprocesses, so the client's loop shares nothing with them. Then:

    .venv/bin/python bench/router_latency.py [--jobs 500] [--concurrency 16] [--instances 20]

(--instances 1 gives the baseline the 20 are compared with.)

Rows (see bench/README.md):

  submit        Submit RPC, call start -> reply (validate, select among 20, persist, dispatch)
  dispatched    call start -> the job's message seen on its JetStream subject
  selection     Selector.choose over the 20 live registrations, in-process, per policy

Submits name no provider, so every one is routed by the router's policy over all 20.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nats
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from genmesh.v1 import bus_pb2, generate_service_pb2, job_pb2  # noqa: E402
from services.common.bus import Bus  # noqa: E402
from services.common.parameters import dict_to_struct  # noqa: E402
from services.router.breakers import Breakers  # noqa: E402
from services.router.catalog import Catalog  # noqa: E402
from services.router.selection import (  # noqa: E402
    POLICIES,
    LatencyTracker,
    Request,
    SelectionConfig,
    Selector,
)
from tests.conftest import Database  # noqa: E402
from tests.infra import eventually, private_nats_server  # noqa: E402
from tests.mesh import Mesh, running_mesh, start_process, stop_process  # noqa: E402

PARAMETERS = {"latency_ms": 0, "steps": 0, "width": 32, "height": 32, "preview": False}


def instance_names(count: int) -> list[str]:
    return [f"s{i:02d}" for i in range(count)]


def catalog_file(directory: Path, names: Sequence[str]) -> Path:
    path = directory / "providers.toml"
    path.write_text("".join(f'[[providers]]\nname = "{n}"\nfamily = "sandbox"\n\n' for n in names))
    return path


def spec() -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        parameters=dict_to_struct(PARAMETERS),
    )


def percentiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return at(0.50), at(0.95), at(0.99)


class Dispatches:
    """When each job's message appeared on its provider's subject (core NATS sees JetStream
    publishes too), by job id."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def on_message(self, msg: Msg) -> None:
        now = time.perf_counter()
        dispatch = bus_pb2.JobDispatch()
        dispatch.ParseFromString(msg.data)
        self.seen.setdefault(dispatch.job.id, now)


async def submit_round(
    mesh: Mesh, jobs: int, concurrency: int, dispatches: Dispatches
) -> tuple[list[float], list[float], set[str]]:
    """Submit `jobs` jobs, `concurrency` at a time; Submit latencies, submit->dispatched
    latencies, and the providers chosen."""
    submit_s: list[float] = []
    started: dict[str, float] = {}
    chosen: set[str] = set()
    remaining = iter(range(jobs))

    async def client() -> None:
        for _ in remaining:
            start = time.perf_counter()
            reply = await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec()))
            submit_s.append(time.perf_counter() - start)
            started[reply.job.id] = start
            chosen.add(reply.job.provider)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    await eventually(lambda: set(started) <= set(dispatches.seen), within=30)
    dispatched_s = [dispatches.seen[j] - t for j, t in started.items()]
    return submit_s, dispatched_s, chosen


async def selection_cost(
    nats_url: str, prefix: str, names: Sequence[str], rounds: int
) -> dict[str, float]:
    """Microseconds per Selector.choose over the live catalog's registrations, per policy."""
    bus = Bus(prefix)
    nc = await nats.connect(nats_url)
    try:
        catalog = Catalog(await bus.providers_kv(nc.jetstream()), liveness=60.0)
        await catalog.start()
        try:
            assert len(catalog.providers()) == len(names)
            latency = LatencyTracker()
            for i, name in enumerate(names):
                latency.observe(name, job_pb2.TASK_TEXT_TO_IMAGE, 0.1 + i / 100)
            selector = Selector(
                catalog.providers,
                SelectionConfig(),
                Breakers(5, 30.0),
                latency,
                random.Random(1),
            )
            costs = {}
            for name, policy in POLICIES.items():
                request = Request(
                    task=job_pb2.TASK_TEXT_TO_IMAGE,
                    parameters=PARAMETERS,
                    policy=policy,
                    prompt="a red fox in snow",
                )
                start = time.perf_counter()
                for _ in range(rounds):
                    selector.choose(request)
                costs[name] = (time.perf_counter() - start) / rounds * 1e6
            return costs
        finally:
            await catalog.stop()
    finally:
        await nc.close()


async def main(args: argparse.Namespace) -> None:
    names = instance_names(args.instances)
    with tempfile.TemporaryDirectory(prefix="genmesh-bench-") as tmp, private_nats_server() as url:
        directory = Path(tmp)
        database = Database(
            args.database_url or f"sqlite:///{directory / 'router.db'}",
            args.database_schema,
            "postgres" if args.database_url else "sqlite",
        )
        prefix = "bench"
        async with running_mesh(
            nats_url=url,
            prefix=prefix,
            database=database,
            data_dir=directory,
            workers=0,
            router_in_process=False,
            router_overrides={"GENMESH_LOG_LEVEL": "WARNING"},
        ) as mesh:
            worker = start_process(
                "services.providers",
                {
                    **mesh.env,
                    "GENMESH_PROVIDERS_FILE": str(catalog_file(directory, names)),
                    "GENMESH_WORKER_PROVIDERS": ",".join(names),
                },
            )
            try:
                for name in names:
                    await mesh.wait_for_provider(name)
                dispatches = Dispatches()
                nc = await nats.connect(url)
                try:
                    await nc.subscribe(f"{prefix}.jobs.>", cb=dispatches.on_message)
                    await submit_round(mesh, 32, 4, dispatches)  # warm-up
                    rows = []
                    for concurrency in (1, args.concurrency):
                        submit_s, dispatched_s, chosen = await submit_round(
                            mesh, args.jobs, concurrency, dispatches
                        )
                        rows.append((concurrency, submit_s, dispatched_s, chosen))
                finally:
                    await nc.close()
                costs = await selection_cost(url, prefix, names, args.selection_rounds)
            finally:
                await stop_process(worker)
    report(args, rows, costs)


def report(
    args: argparse.Namespace,
    rows: list[tuple[int, list[float], list[float], set[str]]],
    costs: dict[str, float],
) -> None:
    db = "PostgreSQL" if args.database_url else "SQLite"
    print(f"router added latency, {args.instances} configured sandbox instances, {db}, ")
    print(f"{args.jobs} jobs per row, CPython {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    print("| in flight | measure | p50 ms | p95 ms | p99 ms | mean ms | providers chosen |")
    print("|---|---|---|---|---|---|---|")
    for concurrency, submit_s, dispatched_s, chosen in rows:
        for label, samples in (("Submit", submit_s), ("submit -> dispatched", dispatched_s)):
            p50, p95, p99 = percentiles(samples)
            mean = statistics.fmean(samples) * 1000
            print(
                f"| {concurrency} | {label} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {mean:.1f} "
                f"| {len(chosen)} |"
            )
    print(f"\nSelector.choose over {args.instances} live registrations (in-process, per job):\n")
    print("| policy | µs per job |")
    print("|---|---|")
    for policy, micros in costs.items():
        print(f"| {policy} | {micros:.0f} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances", type=int, default=20, help="sandbox instances in the catalog (default 20)"
    )
    parser.add_argument("--jobs", type=int, default=500, help="jobs per row (default 500)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="Submit calls in flight in the second row"
    )
    parser.add_argument("--selection-rounds", type=int, default=2000)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--database-schema", default="", help="PostgreSQL schema to use")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
