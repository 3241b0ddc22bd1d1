"""`genmesh generate`: submit a job (or re-attach to one), show it live, download its outputs."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from genmesh.v1 import (
    asset_service_pb2_grpc,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
)
from genmesh_cli import assets
from genmesh_cli.client import (
    Addresses,
    CliError,
    add_address_args,
    channel,
    format_rpc_error,
    human_size,
    params_struct,
    parse_param,
    seconds_arg,
)
from genmesh_cli.display import JobPanel, JsonView, LiveView, console
from genmesh_cli.follow import Follower, Outcome, StreamStalled, View
from services.common.tasks import (
    INPUT_MEDIA,
    PROMPT_OPTIONAL,
    listed,
    task_from_name,
    task_name,
)
from services.prompt import core as prompt_rules
from services.router.pipelines.builtin import BUILTINS
from services.router.pipelines.plan import sample_prompt

EXIT_FAILED = 1
EXIT_CANCELLED = 2


def task_arg(text: str) -> job_pb2.Task.ValueType:
    """argparse type for --task: "text-to-image" and friends."""
    try:
        return task_from_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def param_arg(text: str) -> tuple[str, Any]:
    """argparse type for --param key=value."""
    try:
        return parse_param(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers: Any, addresses: Addresses) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "generate",
        help="run a job and follow it live",
        description="Submit a generation job, show its progress live and download its outputs. "
        "Exit codes: 0 completed, 1 failed or error, 2 cancelled or a usage error (a bad flag, "
        "no prompt for a task that needs one, an input file missing or of a kind the task "
        "cannot take).",
    )
    p.add_argument(
        "prompt",
        nargs="?",
        default="",
        help=f"what to generate (optional guidance for {listed(PROMPT_OPTIONAL)})",
    )
    p.add_argument("--task", "-t", type=task_arg, help="e.g. text-to-image, text-to-speech")
    p.add_argument(
        "--pipeline",
        metavar="NAME",
        default="",
        help=f"run a built-in pipeline instead of one task: {', '.join(BUILTINS)}",
    )
    p.add_argument("--watch", metavar="JOB_ID", help="re-attach to an existing job instead")
    p.add_argument(
        "--input",
        "-i",
        dest="inputs",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="input file, uploaded to storage first (e.g. for image-to-image)",
    )
    add_job_options(p, addresses)
    p.add_argument("--idempotency-key", default="", help="same key and spec: same job")
    p.add_argument(
        "--json",
        action="store_true",
        help='JSON lines on stdout: {"job": Job} first and after a re-attach, {"event": '
        'JobEvent} for each event, then one {"asset_id", "path", "media_type", "size_bytes"} '
        "per output saved (README: genmesh generate --json)",
    )
    p.set_defaults(run=run)


def add_job_options(p: argparse.ArgumentParser, addresses: Addresses) -> None:
    """Options every command that submits jobs takes: provider, parameters, addresses, output."""
    p.add_argument("--provider", default="", help="provider to use (default: router chooses)")
    p.add_argument(
        "--param",
        "-p",
        dest="params",
        type=param_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider parameter; VALUE is JSON when it parses, else a string (repeatable)",
    )
    add_routing_options(p)
    add_address_args(p, addresses, storage=True)
    p.add_argument(
        "--out", type=Path, default=Path("genmesh-output"), help="output dir [%(default)s]"
    )
    p.add_argument("--no-download", action="store_true", help="list outputs, do not download")


PRIORITIES = {
    "low": job_pb2.PRIORITY_LOW,
    "normal": job_pb2.PRIORITY_NORMAL,
    "high": job_pb2.PRIORITY_HIGH,
}


def add_routing_options(p: argparse.ArgumentParser) -> None:
    """How the router treats the job: priority, time budgets, hedging, drafts."""
    p.add_argument("--priority", choices=PRIORITIES, help="under load, higher starts first")
    p.add_argument("--timeout", type=seconds_arg, metavar="SECONDS", help="the whole job's budget")
    p.add_argument(
        "--attempt-timeout", type=seconds_arg, metavar="SECONDS", help="one attempt's budget"
    )
    p.add_argument(
        "--hedge-after",
        type=seconds_arg,
        metavar="SECONDS",
        help="start a second provider when the job shows no progress for this long",
    )
    p.add_argument(
        "--draft", action="store_true", help="image/video: a quick draft preview before the result"
    )


def apply_routing_options(args: argparse.Namespace, spec: job_pb2.JobSpec) -> None:
    if args.priority:
        spec.priority = PRIORITIES[args.priority]
    for field, value in (
        (spec.timeout, args.timeout),
        (spec.attempt_timeout, args.attempt_timeout),
        (spec.hedge_after, args.hedge_after),
    ):
        if value:
            field.FromNanoseconds(int(value * 1e9))
    spec.draft_first = args.draft


def build_spec(
    args: argparse.Namespace, input_asset_ids: list[str], prompt: str | None = None
) -> job_pb2.JobSpec:
    """The JobSpec the arguments describe (with `prompt` instead of theirs when given);
    always with an idempotency key, so retries are safe."""
    spec = job_pb2.JobSpec(
        task=args.task or job_pb2.TASK_UNSPECIFIED,
        prompt=args.prompt if prompt is None else prompt,
        input_asset_ids=input_asset_ids,
        provider=args.provider,
        idempotency_key=args.idempotency_key or f"cli-{uuid.uuid4()}",
    )
    if args.params:
        spec.parameters.CopyFrom(params_struct(args.params))
    if getattr(args, "pipeline", ""):
        spec.pipeline.name = args.pipeline
    apply_routing_options(args, spec)
    return spec


def check_args(args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; exit code 2 like its own usage errors."""
    if not args.no_download:
        assets.check_out_dir(args.out)
    if args.watch:
        extra = [
            flag
            for flag, given in [
                ("a prompt", args.prompt),
                ("--task", args.task),
                ("--pipeline", args.pipeline),
                ("--param", args.params),
                ("--input", args.inputs),
                ("--provider", args.provider),
                ("--idempotency-key", args.idempotency_key),
                ("--priority", args.priority),
                ("--timeout", args.timeout),
                ("--attempt-timeout", args.attempt_timeout),
                ("--hedge-after", args.hedge_after),
                ("--draft", args.draft),
            ]
            if given
        ]
        if extra:
            raise CliError(f"--watch re-attaches to a job; drop {', '.join(extra)}", 2)
    elif args.task and args.pipeline:
        raise CliError(
            "give --task or --pipeline, not both: a pipeline's steps have their tasks", 2
        )
    elif args.pipeline and args.params:
        raise CliError(
            "--param sets a single job's parameters; a pipeline's steps have their own "
            "(set JobSpec.pipeline.steps over gRPC)",
            2,
        )
    elif not args.task and not args.pipeline:
        raise CliError(
            "--task is required (e.g. --task text-to-image), or --pipeline NAME, or --watch JOB_ID",
            2,
        )
    if args.watch:
        return
    what, needs = _input_needs(args)
    _check_prompt(args, what)
    if needs and not args.inputs:
        kinds = "/".join(f"{kind}*" for kind in needs)
        raise CliError(f"{what} needs an input file ({kinds}): --input FILE", 2)
    assets.check_inputs(args.inputs)
    assets.check_kinds(args.inputs, what, needs)


def _check_prompt(args: argparse.Namespace, what: str) -> None:
    """Refuse a blank prompt where the router would: for a task that needs one, or for a
    pipeline step whose prompt would then be blank."""
    if not args.pipeline:
        if prompt_rules.missing(args.prompt, args.task):
            raise CliError(f'{what} needs a prompt: genmesh generate -t {what} "PROMPT"', 2)
        return
    earlier: set[str] = set()
    for step in BUILTINS[args.pipeline]:
        if prompt_rules.missing(sample_prompt(step, args.prompt, earlier), step.task):
            raise CliError(
                f"{what} needs a prompt (for its {task_name(step.task)} step {step.name!r}): "
                f'genmesh generate --pipeline {args.pipeline} "PROMPT"',
                2,
            )
        earlier.add(step.name)


def _input_needs(args: argparse.Namespace) -> tuple[str, tuple[str, ...] | None]:
    """What the job is called in messages, and the media its input may be (None: none)."""
    if not args.pipeline:
        return task_name(args.task), INPUT_MEDIA.get(args.task)
    steps = BUILTINS.get(args.pipeline)
    if steps is None:
        raise CliError(f"unknown pipeline {args.pipeline!r}; built in: {', '.join(BUILTINS)}", 2)
    # The pipeline's input goes to the steps that name it; they read one kind of media.
    readers = [INPUT_MEDIA[step.task] for step in steps if "input" in step.inputs]
    return f"pipeline {args.pipeline}", readers[0] if readers else None


def run(args: argparse.Namespace) -> int:
    check_args(args)
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    out = console()
    async with channel(args.router) as router_channel, channel(args.storage) as storage_channel:
        storage = asset_service_pb2_grpc.AssetServiceStub(storage_channel)
        input_ids: list[str] = []
        for path in args.inputs:
            try:
                asset = await assets.upload(storage_channel, path)
            except grpc.aio.AioRpcError as error:
                raise CliError(
                    f"upload of {path}: {format_rpc_error(error, args.storage)}"
                ) from None
            except OSError as error:  # readable when checked, not when read
                raise CliError(f"upload of {path}: {error.strerror or error}") from None
            input_ids.append(asset.id)
            if not args.json:
                out.print(f"uploaded {path} as asset {asset.id} ({asset.media_type})")

        panel = JobPanel()
        view: View = JsonView() if args.json else LiveView(panel)
        follower = Follower(
            generate_service_pb2_grpc.GenerateServiceStub(router_channel),
            job_service_pb2_grpc.JobServiceStub(router_channel),
            view,
        )
        try:
            outcome = await _follow(args, follower, panel, out, input_ids)
        except grpc.aio.AioRpcError as error:
            raise CliError(format_rpc_error(error, args.router)) from None
        except StreamStalled as error:
            raise CliError(str(error)) from None
        except asyncio.CancelledError:
            # Ctrl-C detaches; the job itself keeps running in the mesh.
            if follower.job_id:
                # On stderr, unwrapped: stdout may be JSON lines, and the commands must
                # stay copyable.
                console(stderr=True).print(
                    f"detached from job {follower.job_id}; it keeps running. "
                    f"Re-attach: genmesh generate --watch {follower.job_id}  "
                    f"Stop it: genmesh cancel {follower.job_id}",
                    style="yellow",
                    soft_wrap=True,
                )
            raise
        return await _report(args, outcome, storage, out)


async def _follow(
    args: argparse.Namespace,
    follower: Follower,
    panel: JobPanel,
    out: Console,
    input_ids: list[str],
) -> Outcome:
    async def follow() -> Outcome:
        if args.watch:
            return await follower.watch(args.watch)
        return await follower.generate(build_spec(args, input_ids))

    if args.json:
        return await follow()
    try:
        # Transient: a call refused before any job exists leaves only its error line.
        with Live(panel, console=out, refresh_per_second=8, transient=True):
            return await follow()
    finally:
        if panel.job_id:
            out.print(panel)


async def download_outputs(
    args: argparse.Namespace, outcome: Outcome, storage: asset_service_pb2_grpc.AssetServiceStub
) -> list[assets.Saved]:
    """A job's output assets, saved under --out/<job id>/."""
    saved: list[assets.Saved] = []
    directory = args.out / outcome.job_id
    taken: set[Path] = set()
    for asset in outcome.assets:
        path = assets.unique_path(directory, assets.file_name(asset), taken)
        try:
            saved.append(await assets.download(storage, asset, path))
        except grpc.aio.AioRpcError as error:
            raise CliError(
                f"download of asset {asset.id}: {format_rpc_error(error, args.storage)}"
            ) from None
        except OSError as error:
            raise CliError(
                f"cannot save job {outcome.job_id}'s outputs in {directory}: "
                f"{error.strerror or error}; they stay in storage: genmesh generate "
                f"--watch {outcome.job_id} --out DIR"
            ) from None
    return saved


async def _report(
    args: argparse.Namespace,
    outcome: Outcome,
    storage: asset_service_pb2_grpc.AssetServiceStub,
    out: Console,
) -> int:
    err = console(stderr=True)
    if outcome.state == job_pb2.JOB_STATE_FAILED:
        provider = f" (provider {outcome.provider})" if outcome.provider else ""
        code = outcome.error.code or "failed"
        err.print(f"job {outcome.job_id} failed: {code}: {outcome.error.message}{provider}")
        return EXIT_FAILED
    if outcome.state == job_pb2.JOB_STATE_CANCELLED:
        reason = f": {outcome.error.message}" if outcome.error.message else ""
        err.print(f"job {outcome.job_id} was cancelled{reason}")
        return EXIT_CANCELLED

    saved = [] if args.no_download else await download_outputs(args, outcome, storage)

    if args.json:
        for item in saved:
            record = {
                "asset_id": item.asset.id,
                "path": str(item.path),
                "media_type": item.asset.media_type,
                "size_bytes": item.asset.size_bytes,
            }
            print(json.dumps(record), flush=True)
        return 0

    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for column in ("output", "media type", "size"):
        table.add_column(column, overflow="fold")
    if saved:
        for item in saved:
            table.add_row(str(item.path), item.asset.media_type, human_size(item.asset.size_bytes))
    else:
        for asset in outcome.assets:
            table.add_row(f"asset {asset.id}", asset.media_type, human_size(asset.size_bytes))
    if outcome.assets:
        out.print(table)
    if outcome.output_text:
        out.print("[bold]text:[/bold]")
        out.print(outcome.output_text, markup=False)
    return 0
