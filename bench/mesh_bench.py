"""Load benchmark for a RUNNING genmesh mesh, through the public gRPC API only.

Start the mesh first (`genmesh up`), then:

    .venv/bin/python bench/mesh_bench.py [--router 127.0.0.1:50051] [--quick] [--worker-pid PID]

Scenarios (one row each in the final table; see bench/README.md):

  a   zero-latency text-to-image jobs, 64 in flight: jobs/s and latency percentiles
  b   jobs with latency_ms=2000, all in flight at once: jobs/s and latency percentiles
  c   zero-latency jobs one at a time: latency percentiles
  d1  one WatchJob stream on one job (latency_ms=3000, steps=50): events/s
  d   one WatchJob stream per job, 500 jobs at once: events/s over the whole run
  dr  the same 500 (finished) jobs watched again from sequence 0: replay events/s

Latency of a job = time from the Generate call's start to its terminal event.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvloop
from rich.console import Console
from rich.table import Table

from genmesh.v1 import (
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from services.common.parameters import dict_to_struct

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
CALL_TIMEOUT_S = 300.0
TERMINAL = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
SCENARIOS = ("a", "b", "c", "d1", "d", "dr")

console = Console(width=None if sys.stdout.isatty() else 200)


# --------------------------------------------------------------------------- plumbing


class Channels:
    """A few independent channels (separate TCP connections), handed out round-robin."""

    def __init__(self, target: str, count: int, unique_outputs: bool = False) -> None:
        # Give every generated job its own seed, so storage writes (and fsyncs) a new blob
        # for each instead of finding the one every other job rendered already.
        self.unique_outputs = unique_outputs
        self._seeds = itertools.count(1)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Without this, channels to the same target share one connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]
        self._generate = [generate_service_pb2_grpc.GenerateServiceStub(c) for c in self.channels]
        self._jobs = [job_service_pb2_grpc.JobServiceStub(c) for c in self.channels]
        self._next: Iterator[int] = itertools.cycle(range(count))

    def next_seed(self) -> int:
        return next(self._seeds)

    def generate(self) -> generate_service_pb2_grpc.GenerateServiceStub:
        return self._generate[next(self._next)]

    def jobs(self) -> job_service_pb2_grpc.JobServiceStub:
        return self._jobs[next(self._next)]

    async def ready(self) -> None:
        async with asyncio.timeout(10):
            await asyncio.gather(*(c.channel_ready() for c in self.channels))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))


def spec(
    latency_ms: int = 0, steps: int = 0, size: int = 64, preview: bool = False
) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a red fox in snow",
        provider="sandbox",
        parameters=dict_to_struct(
            {
                "latency_ms": latency_ms,
                "steps": steps,
                "width": size,
                "height": size,
                "preview": preview,
            }
        ),
    )


@dataclass
class Outcome:
    """What happened to one job (or one watch stream)."""

    ok: bool
    latency_s: float = 0.0
    events: int = 0
    failure: str = ""


def rpc_failure(exc: grpc.aio.AioRpcError) -> str:
    code = exc.code()
    return f"rpc {code.name if code else '?'}: {(exc.details() or '')[:80]}"


def state_name(state: job_pb2.JobState.ValueType) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


async def generate_once(chans: Channels, job_spec: job_pb2.JobSpec) -> Outcome:
    """Generate one job; latency = call start to its terminal event."""
    if chans.unique_outputs:
        seeded = job_pb2.JobSpec()
        seeded.CopyFrom(job_spec)
        seeded.parameters.update({"seed": chans.next_seed()})
        job_spec = seeded
    start = time.perf_counter()
    call = chans.generate().Generate(
        generate_service_pb2.GenerateRequest(spec=job_spec), timeout=CALL_TIMEOUT_S
    )
    events = 0
    try:
        async for response in call:
            if not response.HasField("event"):
                continue
            events += 1
            event = response.event
            if event.state in TERMINAL:
                latency = time.perf_counter() - start
                call.cancel()
                if event.state == job_pb2.JOB_STATE_COMPLETED:
                    return Outcome(True, latency, events)
                detail = f" {event.error.code}" if event.error.code else ""
                return Outcome(False, latency, events, f"job {state_name(event.state)}{detail}")
    except grpc.aio.AioRpcError as exc:
        return Outcome(False, time.perf_counter() - start, events, rpc_failure(exc))
    return Outcome(False, time.perf_counter() - start, events, "stream ended before terminal")


async def watch_once(chans: Channels, job_id: str, first_event: list[float]) -> Outcome:
    """Watch one job from sequence 0 until its terminal event; counts events received."""
    start = time.perf_counter()
    call = chans.jobs().WatchJob(
        job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=0), timeout=CALL_TIMEOUT_S
    )
    events = 0
    try:
        async for response in call:
            if not response.HasField("event"):
                continue
            if events == 0:
                first_event.append(time.perf_counter())
            events += 1
            if response.event.state in TERMINAL:
                call.cancel()
                ok = response.event.state == job_pb2.JOB_STATE_COMPLETED
                failure = "" if ok else f"job {state_name(response.event.state)}"
                return Outcome(ok, time.perf_counter() - start, events, failure)
    except grpc.aio.AioRpcError as exc:
        return Outcome(False, time.perf_counter() - start, events, rpc_failure(exc))
    return Outcome(False, time.perf_counter() - start, events, "stream ended before terminal")


async def bounded(n: int, limit: int, make: Callable[[int], Awaitable[Outcome]]) -> list[Outcome]:
    """Run make(0..n-1) with at most `limit` in flight; exceptions become failures."""
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Outcome:
        async with gate:
            try:
                return await make(i)
            except Exception as exc:  # a bench must survive anything and count it
                return Outcome(False, failure=f"{type(exc).__name__}: {str(exc)[:80]}")

    return await asyncio.gather(*(one(i) for i in range(n)))


# --------------------------------------------------------------------------- worker RSS


def read_rss_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB from /proc/PID/status, or None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM", 0)


class RssSampler:
    """Samples the worker's VmRSS every 100 ms while a scenario runs; keeps the peak."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        assert self.pid is not None
        while True:
            got = read_rss_kib(self.pid)
            if got is not None:
                self.peak_kib = max(self.peak_kib, got[0])
            await asyncio.sleep(0.1)

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        got = read_rss_kib(self.pid) if self.pid is not None else None
        if got is not None:
            self.peak_kib = max(self.peak_kib, got[0])


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    name: str
    what: str
    n: int
    wall_s: float
    outcomes: list[Outcome]
    rate_unit: str = "jobs/s"
    count_events: bool = False
    worker_peak_kib: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def failures(self) -> Counter[str]:
        return Counter(o.failure for o in self.outcomes if not o.ok)

    @property
    def events(self) -> int:
        return sum(o.events for o in self.outcomes)

    @property
    def rate(self) -> float:
        amount = self.events if self.count_events else self.ok
        return amount / self.wall_s if self.wall_s > 0 else 0.0

    def percentiles_ms(self) -> tuple[float, float, float] | None:
        lat = sorted(o.latency_s * 1000 for o in self.outcomes if o.ok)
        if len(lat) < 2:
            return (lat[0], lat[0], lat[0]) if lat else None
        q = statistics.quantiles(lat, n=100, method="inclusive")
        return q[49], q[94], q[98]


HEADERS = (
    "row",
    "scenario",
    "n",
    "ok",
    "failed",
    "wall s",
    "rate",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "worker RSS peak",
)


def row_cells(row: Row) -> list[str]:
    pct = row.percentiles_ms() if not row.count_events else None
    p50, p95, p99 = (f"{v:.1f}" for v in pct) if pct else ("-", "-", "-")
    rss = f"{row.worker_peak_kib / 1024:.0f} MiB" if row.worker_peak_kib else "-"
    return [
        row.name,
        row.what,
        str(row.n),
        str(row.ok),
        str(row.n - row.ok),
        f"{row.wall_s:.2f}",
        f"{row.rate:,.0f} {row.rate_unit}",
        p50,
        p95,
        p99,
        rss,
    ]


def render(rows: Sequence[Row], header: str) -> None:
    table = Table(title=header)
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("row", "scenario") else "right")
    for row in rows:
        table.add_row(*row_cells(row))
    console.print(table)
    for row in rows:
        for failure, count in row.failures.most_common(5):
            console.print(f"  [red]{row.name}: {count} x {failure}[/red]")
        for note in row.notes:
            console.print(f"  {row.name}: {note}")


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    for row in rows:
        for failure, count in row.failures.most_common(5):
            lines.append(f"\n- {row.name}: {count} x {failure}")
        lines += [f"\n- {row.name}: {note}" for note in row.notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- scenarios


async def scenario_generate(
    chans: Channels,
    name: str,
    what: str,
    n: int,
    in_flight: int,
    job_spec: job_pb2.JobSpec,
    worker_pid: int | None,
) -> Row:
    with RssSampler(worker_pid) as rss:
        start = time.perf_counter()
        outcomes = await bounded(n, in_flight, lambda _: generate_once(chans, job_spec))
        wall = time.perf_counter() - start
    return Row(name, what, n, wall, outcomes, worker_peak_kib=rss.peak_kib)


async def submit(chans: Channels, job_spec: job_pb2.JobSpec) -> str:
    response = await chans.generate().Submit(
        generate_service_pb2.SubmitRequest(spec=job_spec), timeout=60
    )
    return str(response.job.id)


async def scenario_watch(
    chans: Channels, name: str, what: str, n: int, worker_pid: int | None
) -> tuple[Row, list[str]]:
    """Submit n jobs (latency 3 s, 50 steps); one WatchJob(after_sequence=0) per job.

    Each watcher starts as soon as its job's Submit returns. The rate is the events
    received by all watchers over the whole run: first Submit to the last terminal event.
    """
    job_spec = spec(latency_ms=3000, steps=50)
    job_ids: list[str] = []
    first_event: list[float] = []

    async def submit_and_watch(_: int) -> Outcome:
        try:
            job_id = await submit(chans, job_spec)
        except grpc.aio.AioRpcError as exc:
            return Outcome(False, failure="submit " + rpc_failure(exc))
        job_ids.append(job_id)
        return await watch_once(chans, job_id, first_event)

    with RssSampler(worker_pid) as rss:
        start = time.perf_counter()
        outcomes = await bounded(n, n, submit_and_watch)
        wall = time.perf_counter() - start
    row = Row(name, what, n, wall, outcomes, "events/s", True, rss.peak_kib)
    per_stream = [o.events for o in outcomes if o.ok]
    if per_stream:
        row.notes.append(
            f"{row.events} events; per stream min/median/max "
            f"{min(per_stream)}/{statistics.median(per_stream):.0f}/{max(per_stream)}"
        )
    return row, job_ids


async def scenario_replay(
    chans: Channels, name: str, what: str, job_ids: Sequence[str], worker_pid: int | None
) -> Row:
    first_event: list[float] = []
    with RssSampler(worker_pid) as rss:
        start = time.perf_counter()
        outcomes = await bounded(
            len(job_ids), len(job_ids), lambda i: watch_once(chans, job_ids[i], first_event)
        )
        wall = time.perf_counter() - start
    return Row(name, what, len(job_ids), wall, outcomes, "events/s", True, rss.peak_kib)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--router", default="127.0.0.1:50051", help="router address [%(default)s]")
    parser.add_argument("--quick", action="store_true", help="1/10 of every size (smoke run)")
    parser.add_argument("--worker-pid", type=int, help="report this worker's RSS (from /proc)")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help="comma-separated scenarios to run, of " + ",".join(SCENARIOS) + " [all]",
    )
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the client's event loop [%(default)s]",
    )
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels [%(default)s]")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument(
        "--unique-outputs",
        action="store_true",
        help="a seed per generated job, so each output is a new blob (by default every job "
        "renders the same PNG, which storage then already holds)",
    )
    args = parser.parse_args(argv)
    host = args.router.rpartition(":")[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("this benchmark only sends traffic to loopback")
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


async def run(args: argparse.Namespace) -> list[Row]:
    scale = 10 if args.quick else 1
    only = set(args.only.split(","))
    pid: int | None = args.worker_pid
    chans = Channels(args.router, args.channels, args.unique_outputs)
    rows: list[Row] = []
    try:
        await chans.ready()
        # Warm-up: connections, the router's provider lookup, the worker's first render.
        await bounded(32, 8, lambda _: generate_once(chans, spec()))

        def done(row: Row) -> None:
            rows.append(row)
            console.print(
                f"[dim]{row.name}: {row.ok}/{row.n} ok in {row.wall_s:.2f} s, "
                f"{row.rate:,.0f} {row.rate_unit}[/dim]"
            )

        if "a" in only:
            n = 2000 // scale
            done(await scenario_generate(chans, "a", "latency 0, 64 in flight", n, 64, spec(), pid))
        if "b" in only:
            n = 1000 // scale
            done(
                await scenario_generate(
                    chans, "b", f"latency 2000 ms, {n} in flight", n, n, spec(2000), pid
                )
            )
        if "c" in only:
            n = 500 // scale
            done(await scenario_generate(chans, "c", "latency 0, 1 in flight", n, 1, spec(), pid))
        if "d1" in only:
            row, _ = await scenario_watch(chans, "d1", "1 WatchJob stream (3 s, 50 steps)", 1, pid)
            done(row)
        if "d" in only or "dr" in only:
            n = 500 // scale
            row, job_ids = await scenario_watch(
                chans, "d", f"{n} WatchJob streams (3 s, 50 steps)", n, pid
            )
            if "d" in only:
                done(row)
            if "dr" in only:
                done(
                    await scenario_replay(
                        chans,
                        "dr",
                        f"{len(job_ids)} WatchJob replays of finished jobs",
                        job_ids,
                        pid,
                    )
                )
    finally:
        await chans.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    # The client shares the machine's cores with the mesh: uvloop keeps its share small.
    factory = uvloop.new_event_loop if args.event_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        rows = runner.run(run(args))
    header = (
        f"genmesh bench {started}, router {args.router}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}"
        + (" (--quick)" if args.quick else "")
        + f", client on {args.event_loop}"
    )
    render(rows, header)
    if args.worker_pid is not None:
        got = read_rss_kib(args.worker_pid)
        if got is not None:
            console.print(
                f"worker pid {args.worker_pid}: VmRSS {got[0] / 1024:.0f} MiB, "
                f"VmHWM (lifetime peak) {got[1] / 1024:.0f} MiB"
            )
    if args.markdown is not None:
        args.markdown.write_text(f"{header}\n\n{markdown(rows)}")
    failed = sum(r.n - r.ok for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
