"""`genmesh batch FILE`: one job per line in one SubmitBatch call, the whole batch live on one
line, then where each job's outputs are."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from genmesh.v1 import (
    asset_service_pb2_grpc,
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from genmesh_cli import assets
from genmesh_cli.client import (
    TERMINAL_STATES,
    Addresses,
    CliError,
    channel,
    format_rpc_error,
    human_size,
)
from genmesh_cli.display import STATE_STYLE, console
from genmesh_cli.follow import Outcome, retry_broken
from genmesh_cli.generate import add_job_options, build_spec, download_outputs, task_arg
from genmesh_cli.tables import print_rows
from services.common.tasks import state_name

# How long to retry SubmitBatch and re-attach to the batch while the router is unreachable:
# as long as `genmesh generate` waits, so a mesh restart is outlasted.
RETRY_FOR = 60.0


def add_parser(subparsers: Any, addresses: Addresses) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "batch",
        help="run one job per line of a file and follow the whole batch",
        description="Submit one job per non-empty line of FILE (- for stdin) in one call, all "
        "or none, show the batch's progress live and download the outputs. "
        "Exit codes: 0 every job completed, 1 a job failed or was cancelled, or an error, 2 a "
        "usage error (a bad flag, a file that cannot be read or holds no prompt).",
    )
    p.add_argument("file", help="prompts, one per line (- reads stdin)")
    p.add_argument("--task", "-t", type=task_arg, required=True, help="e.g. text-to-image")
    add_job_options(p, addresses)
    # Each spec gets a key of its own (build_spec), so a retried call is the same batch.
    p.set_defaults(run=run, idempotency_key="")


def read_prompts(file: str) -> tuple[list[str], list[int]]:
    """The non-empty lines of `file`, stripped, and their line numbers."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read {file}: {error}", 2) from None
    kept = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not kept:
        raise CliError(f"{file} has no prompts (one per line)", 2)
    return [prompt for _, prompt in kept], [n for n, _ in kept]


def name_lines(message: str, lines: list[int]) -> str:
    """The router's `specs[k]` as the file's line (blank lines are not specs)."""

    def line(found: re.Match[str]) -> str:
        index = int(found.group(1))
        return f"line {lines[index]}" if index < len(lines) else found.group(0)

    return re.sub(r"specs\[(\d+)\]", line, message)


# The progress bar's width where the line has room, and the least worth showing.
BAR_WIDTH = 30
MIN_BAR_WIDTH = 10


@dataclass
class BatchPanel:
    """The batch at a glance: a bar of ended jobs and a count per state, within the width
    rich gives it."""

    batch_id: str
    job_ids: list[str]
    states: dict[str, job_pb2.JobState.ValueType] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, job_pb2.Job] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    note: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None

    def update(self, reply: job_service_pb2.WatchBatchResponse) -> None:
        which = reply.WhichOneof("update")
        if which == "job":
            job = reply.job
            self.jobs[job.id] = job
            if job.last_sequence >= self.last.get(job.id, 0):
                self.last[job.id] = job.last_sequence
                self.states[job.id] = job.state
                if job.state in TERMINAL_STATES:
                    self.outcomes[job.id] = Outcome.from_job(job)
        elif which == "event":
            event = reply.event
            # A re-attached stream repeats what was seen; show each event once.
            if event.sequence <= self.last.get(event.job_id, 0):
                return
            self.last[event.job_id] = event.sequence
            self.states[event.job_id] = event.state
            if event.state in TERMINAL_STATES:
                self.outcomes[event.job_id] = Outcome.from_event(event, self.jobs.get(event.job_id))
        if self.ended is None and all(job_id in self.outcomes for job_id in self.job_ids):
            self.ended = time.time()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        total = len(self.job_ids)
        ended = sum(1 for job_id in self.job_ids if job_id in self.outcomes)
        counts = Counter(self.states.get(job_id) for job_id in self.job_ids)
        head = Text(f"batch {self.batch_id}", style="bold")
        tail = [
            Text(f"{ended}/{total} ended"),
            Text(f"{(self.ended or time.time()) - self.started:.1f}s", style="dim"),
        ]
        # The bar takes what the line leaves (a space between parts), so id, bar, count and
        # time share one line; a fixed 30 squeezed the id below 'batch' at 80 columns.
        room = options.max_width - sum(t.cell_len for t in [head, *tail]) - len(tail) - 1
        bar = [ProgressBar(total=total, completed=ended, width=min(BAR_WIDTH, room))]
        line = Table.grid(padding=(0, 1))
        line.add_column(overflow="fold")  # narrower still, the id folds rather than being cut
        line.add_row(head, *(bar if room >= MIN_BAR_WIDTH else []), *tail)
        tally = Text()
        for state in sorted(s for s in counts if s is not None):
            if tally:
                tally.append("  ")
            tally.append(f"{state_name(state)} {counts[state]}", STATE_STYLE.get(state, ""))
        grid = Table.grid()
        grid.add_row(line)
        grid.add_row(tally)
        if self.note:
            grid.add_row(Text(self.note, style="yellow"))
        yield grid


def run(args: argparse.Namespace) -> int:
    prompts, lines = read_prompts(args.file)
    if not args.no_download:
        assets.check_out_dir(args.out)
    return asyncio.run(_run(args, prompts, lines))


async def _run(args: argparse.Namespace, prompts: list[str], lines: list[int]) -> int:
    out = console()
    # Keyed specs: a retried SubmitBatch returns the same batch instead of a second one.
    specs = [build_spec(args, [], prompt) for prompt in prompts]
    async with channel(args.router) as router_channel, channel(args.storage) as storage_channel:
        try:
            reply = await _submit(
                generate_service_pb2_grpc.GenerateServiceStub(router_channel), specs
            )
        except grpc.aio.AioRpcError as error:
            raise CliError(name_lines(format_rpc_error(error, args.router), lines)) from None
        panel = BatchPanel(reply.batch_id, [job.id for job in reply.jobs])
        jobs = job_service_pb2_grpc.JobServiceStub(router_channel)
        try:
            with Live(panel, console=out, refresh_per_second=8, transient=True):
                await _follow(jobs, panel)
        except grpc.aio.AioRpcError as error:
            raise CliError(
                f"{format_rpc_error(error, args.router)}; batch {panel.batch_id} keeps "
                f"running: genmesh jobs --batch {panel.batch_id}"
            ) from None
        except asyncio.CancelledError:
            console(stderr=True).print(
                f"detached from batch {panel.batch_id}; its jobs keep running. "
                f"See them: genmesh jobs --batch {panel.batch_id}",
                style="yellow",
                soft_wrap=True,
            )
            raise
        finally:
            out.print(panel)
        storage = asset_service_pb2_grpc.AssetServiceStub(storage_channel)
        return await _report(args, panel, prompts, storage)


async def _submit(
    stub: generate_service_pb2_grpc.GenerateServiceStub, specs: list[job_pb2.JobSpec]
) -> generate_service_pb2.SubmitBatchResponse:
    request = generate_service_pb2.SubmitBatchRequest(specs=specs)
    deadline = time.monotonic() + RETRY_FOR

    async def attempt() -> generate_service_pb2.SubmitBatchResponse:
        reply: generate_service_pb2.SubmitBatchResponse = await stub.SubmitBatch(request)
        return reply

    return await retry_broken(attempt, lambda: deadline, lambda _: None)


async def _follow(stub: job_service_pb2_grpc.JobServiceStub, panel: BatchPanel) -> None:
    """WatchBatch until it closes (every job has ended), re-attaching when the stream breaks."""
    request = job_service_pb2.WatchBatchRequest(batch_id=panel.batch_id)
    deadline = time.monotonic() + RETRY_FOR

    async def attempt() -> None:
        nonlocal deadline
        async for reply in stub.WatchBatch(request):
            if panel.note:
                # The router answers again: the note of its loss must not outlast it (it did
                # where the jobs ended meanwhile, as no event followed the re-attach).
                panel.note = "router back; re-attached"
            panel.update(reply)
            deadline = time.monotonic() + RETRY_FOR

    def broken(error: grpc.aio.AioRpcError) -> None:
        # As `genmesh generate` says it.
        panel.note = f"lost the router ({error.code().name}); re-attaching until it is back"

    await retry_broken(attempt, lambda: deadline, broken)


async def _report(
    args: argparse.Namespace,
    panel: BatchPanel,
    prompts: list[str],
    storage: asset_service_pb2_grpc.AssetServiceStub,
) -> int:
    out = console()
    rows: list[list[str | Text]] = []
    all_completed = True
    for number, (job_id, prompt) in enumerate(zip(panel.job_ids, prompts, strict=True), 1):
        outcome = panel.outcomes[job_id]
        where: list[str] = []
        if outcome.state != job_pb2.JOB_STATE_COMPLETED:
            all_completed = False
            where.append(f"{outcome.error.code or 'ended'}: {outcome.error.message}")
        elif args.no_download:
            where += [f"asset {a.id} ({human_size(a.size_bytes)})" for a in outcome.assets]
        else:
            where += [str(s.path) for s in await download_outputs(args, outcome, storage)]
        if outcome.output_text:
            where.append(" ".join(outcome.output_text.split())[:80])
        rows.append(
            [
                str(number),
                job_id,
                Text(state_name(outcome.state), style=STATE_STYLE.get(outcome.state, "")),
                "\n".join(where) or "-",
                prompt[:60],
            ]
        )
    columns = ("#", "job", "state", "output", "prompt")
    print_rows(out, columns, rows, wrap=frozenset({"output", "prompt"}))
    if not args.no_download and any(o.assets for o in panel.outcomes.values()):
        out.print(f"outputs in {args.out.resolve()}")
    return 0 if all_completed else 1
