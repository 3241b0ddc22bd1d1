"""`genmesh jobs` (a table of recent jobs) and `genmesh cancel JOB_ID`."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime
from typing import Any

import grpc
from rich.text import Text

from genmesh.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from genmesh_cli.client import (
    Addresses,
    CliError,
    add_address_args,
    channel,
    format_rpc_error,
    to_json,
)
from genmesh_cli.display import STATE_STYLE, console
from genmesh_cli.generate import task_arg
from genmesh_cli.tables import print_rows
from services.common.tasks import state_from_name, state_name, task_name


def state_arg(text: str) -> job_pb2.JobState.ValueType:
    try:
        return state_from_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parsers(subparsers: Any, addresses: Addresses) -> None:
    jobs: argparse.ArgumentParser = subparsers.add_parser(
        "jobs", help="list recent jobs", description="List jobs, newest first."
    )
    jobs.add_argument(
        "--state", dest="states", type=state_arg, action="append", default=[], metavar="STATE"
    )
    jobs.add_argument("--task", "-t", type=task_arg, default=job_pb2.TASK_UNSPECIFIED)
    jobs.add_argument("--batch", default="", help="only the jobs of this batch (genmesh batch)")
    jobs.add_argument(
        "--steps",
        action="store_true",
        help="also list the jobs that run pipelines' steps (listed anyway with --task, as a "
        "pipeline has no task of its own)",
    )
    jobs.add_argument("--limit", "-n", type=int, default=20, help="at most this many [20]")
    add_address_args(jobs, addresses)
    jobs.add_argument("--json", action="store_true", help="print jobs as JSON lines")
    jobs.set_defaults(run=run_jobs)

    cancel: argparse.ArgumentParser = subparsers.add_parser(
        "cancel", help="cancel a queued or running job", description="Cancel a job."
    )
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", default="cancelled from the command line")
    add_address_args(cancel, addresses)
    cancel.set_defaults(run=run_cancel)


def run_jobs(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise CliError("--limit must be between 1 and 10000", 2)
    return asyncio.run(_jobs(args))


async def _jobs(args: argparse.Namespace) -> int:
    found: list[job_pb2.Job] = []
    async with channel(args.router) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        token = ""
        try:
            while len(found) < args.limit:
                response = await stub.ListJobs(
                    job_service_pb2.ListJobsRequest(
                        page_size=min(500, args.limit - len(found)),
                        page_token=token,
                        states=args.states,
                        task=args.task,
                        batch_id=args.batch,
                        # A pipeline's row stands for its steps, as on the web page.
                        top_level_only=not (args.steps or args.task),
                    )
                )
                found.extend(response.jobs)
                token = response.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as error:
            raise CliError(format_rpc_error(error, args.router)) from None
    found = found[: args.limit]
    if args.json:
        for job in found:
            print(to_json(job), flush=True)
        return 0
    out = console()
    if not found:
        out.print("no jobs")
        return 0
    rows: list[list[str | Text]] = []
    for job in found:
        created = (
            datetime.fromtimestamp(job.create_time.seconds).strftime("%Y-%m-%d %H:%M:%S")
            if job.HasField("create_time")
            else "-"
        )
        rows.append(
            [
                job.id,
                _task(job),
                Text(state_name(job.state), style=STATE_STYLE.get(job.state, "")),
                job.provider or "-",
                created,
                " ".join(job.spec.prompt.split())[:80],
            ]
        )
    # Ids are for copying into other commands: never shortened.
    columns = ("job", "task", "state", "provider", "created", "prompt")
    # Narrow, two lines a job: the id whole and what fits beside it, the rest below.
    print_rows(out, columns, rows, wrap=frozenset({"prompt"}), two_lines=True)
    return 0


def _task(job: job_pb2.Job) -> str:
    if job.spec.HasField("pipeline"):
        return f"pipeline {job.spec.pipeline.name}".strip()
    return task_name(job.spec.task) if job.spec.task else "-"


def run_cancel(args: argparse.Namespace) -> int:
    return asyncio.run(_cancel(args))


async def _cancel(args: argparse.Namespace) -> int:
    async with channel(args.router) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        try:
            response = await stub.CancelJob(
                job_service_pb2.CancelJobRequest(job_id=args.job_id, reason=args.reason)
            )
        except grpc.aio.AioRpcError as error:
            raise CliError(format_rpc_error(error, args.router)) from None
    console().print(f"job {response.job.id or args.job_id}: {state_name(response.job.state)}")
    return 0
