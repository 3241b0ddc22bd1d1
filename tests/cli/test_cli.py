"""The genmesh command: parsing and formatting, the follow/re-attach logic against a scripted
router on loopback, and `genmesh up` + `genmesh generate` against the real mesh."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from PIL import Image
from rich.console import Console

from genmesh.v1 import (
    asset_pb2,
    asset_service_pb2,
    asset_service_pb2_grpc,
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    provider_service_pb2,
    provider_service_pb2_grpc,
)
from genmesh_cli import assets
from genmesh_cli.client import (
    format_rpc_error,
    params_struct,
    parse_param,
)
from genmesh_cli.display import JobPanel
from genmesh_cli.follow import Follower, StreamStalled
from genmesh_cli.generate import build_spec
from genmesh_cli.main import build_parser
from genmesh_cli.main import run as cli
from genmesh_cli.plan import make_plan
from genmesh_cli.supervisor import Supervisor
from services.common.tasks import state_from_name, state_name
from tests.infra import eventually, free_port, reserved_port

ROOT = Path(__file__).resolve().parents[2]

# --- parsing and formatting -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps=30", ("steps", 30)),
        ("guidance=7.5", ("guidance", 7.5)),
        ("hd=true", ("hd", True)),
        ("size=[512, 768]", ("size", [512, 768])),
        ('voice="alloy"', ("voice", "alloy")),
        ("style=vivid", ("style", "vivid")),
        ("negative=blurry, dark", ("negative", "blurry, dark")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
        (" seed =null", ("seed", None)),
    ],
)
def test_parse_param(text: str, expected: tuple[str, object]) -> None:
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=1", "  =x"])
def test_parse_param_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_param(text)


def test_params_struct_keeps_last_of_repeated_key() -> None:
    struct = params_struct([("steps", 10), ("steps", 30), ("style", "vivid")])
    assert dict(struct) == {"steps": 30.0, "style": "vivid"}


def test_generate_arguments_build_the_spec() -> None:
    args = build_parser({}).parse_args(
        [
            "generate",
            "--task",
            "text-to-image",
            "a red fox in snow",
            "--provider",
            "sandbox",
            "-p",
            "steps=4",
            "--param",
            "style=ink",
        ]
    )
    spec = build_spec(args, ["asset-1"])
    assert spec.task == job_pb2.TASK_TEXT_TO_IMAGE
    assert spec.prompt == "a red fox in snow"
    assert spec.provider == "sandbox"
    assert list(spec.input_asset_ids) == ["asset-1"]
    assert dict(spec.parameters) == {"steps": 4.0, "style": "ink"}
    # Always keyed, so a retried Generate cannot create a second job.
    assert spec.idempotency_key.startswith("cli-")
    assert args.router == "127.0.0.1:50051"
    assert args.storage == "127.0.0.1:50052"
    assert args.out == Path("genmesh-output")
    # Nothing the caller did not ask for.
    assert not spec.HasField("timeout") and not spec.draft_first
    assert spec.priority == job_pb2.PRIORITY_UNSPECIFIED


def test_job_options_reach_the_spec() -> None:
    argv = "generate -t text-to-image fox --priority high --timeout 90 --attempt-timeout 20"
    args = build_parser({}).parse_args([*argv.split(), "--hedge-after", "2.5", "--draft"])
    spec = build_spec(args, [])
    assert spec.priority == job_pb2.PRIORITY_HIGH
    assert spec.timeout.ToSeconds() == 90
    assert spec.attempt_timeout.ToSeconds() == 20
    assert spec.hedge_after.ToMilliseconds() == 2500
    assert spec.draft_first


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_time_budgets_must_be_positive_seconds(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser({}).parse_args(["generate", "-t", "text-to-image", "x", "--timeout", value])
    assert exit_info.value.code == 2
    assert "seconds above 0" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "1e20"])
@pytest.mark.parametrize("flag", ["--timeout", "--attempt-timeout", "--hedge-after"])
@pytest.mark.parametrize("command", ["generate", "batch"])
def test_a_time_budget_no_duration_holds_is_a_usage_error(
    command: str, flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Taken before, then the spec could not be built: a traceback, exit status 1.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    with pytest.raises(SystemExit) as exit_info:
        cli([command, "-t", "text-to-image", str(prompts), flag, value], {})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "seconds above 0 and at most 315,576,000,000" in err
    assert "Traceback" not in err


def test_generate_pipeline_builds_a_pipeline_spec() -> None:
    args = build_parser({}).parse_args(
        ["generate", "--pipeline", "speech-to-image", "--input", "hello.wav"]
    )
    spec = build_spec(args, ["asset-1"])
    assert spec.task == job_pb2.TASK_UNSPECIFIED and spec.pipeline.name == "speech-to-image"
    assert list(spec.input_asset_ids) == ["asset-1"] and spec.idempotency_key


def test_addresses_default_from_environment() -> None:
    env = {"GENMESH_ROUTER_ADDR": "10.1.2.3:7000", "GENMESH_STORAGE_ADDR": "10.1.2.3:7001"}
    args = build_parser(env).parse_args(["generate", "-t", "TEXT_TO_SPEECH", "hello"])
    assert (args.router, args.storage) == ("10.1.2.3:7000", "10.1.2.3:7001")
    assert args.task == job_pb2.TASK_TEXT_TO_SPEECH


def test_several_router_replicas_are_taken_and_a_list_grpc_cannot_take_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    replicas = "127.0.0.1:50051,127.0.0.1:50061"
    assert build_parser({}).parse_args(["jobs", "--router", replicas]).router == replicas
    for argv in [
        ["jobs", "--router", "router-a:50051,router-b:50051"],
        ["batch", "jobs.jsonl", "--storage", "a:1,b:2"],
    ]:
        with pytest.raises(SystemExit) as exited:
            cli(argv, {})
        assert exited.value.code == 2
        assert "argument --" in capsys.readouterr().err
    # From the environment, the variable is named rather than an option not given.
    assert cli(["providers"], {"GENMESH_ROUTER_ADDR": "router-a:50051,router-b:50051"}) == 2
    assert capsys.readouterr().err.startswith("genmesh: GENMESH_ROUTER_ADDR: a list of addresses")


def test_a_port_past_65535_is_a_usage_error_not_another_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # gRPC took 127.0.0.1:99999 as 127.0.0.1:34463, and the error named neither.
    for address, said in (("127.0.0.1:99999", "port must be 1 to 65535"), ("", "no address")):
        with pytest.raises(SystemExit) as exited:
            cli(["jobs", "--router", address], {})
        assert exited.value.code == 2
        assert said in capsys.readouterr().err


def test_an_address_without_a_port_is_a_usage_error_not_port_443(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # gRPC called port 443 for these, and the command failed UNAVAILABLE: `genmesh up` running?
    for argv in (
        ["jobs", "--router", "127.0.0.1"],
        ["batch", "jobs.jsonl", "--storage", "storagehost"],
        ["providers", "--router", "dns:///router"],
    ):
        with pytest.raises(SystemExit) as exited:
            cli(argv, {})
        assert exited.value.code == 2, argv
        assert "needs a port, e.g. 127.0.0.1:" in capsys.readouterr().err, argv
    assert cli(["providers"], {"GENMESH_STORAGE_ADDR": "storagehost"}) == 2
    assert capsys.readouterr().err.startswith("genmesh: GENMESH_STORAGE_ADDR: needs a port")


def test_unknown_task_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["generate", "--task", "text-to-smell", "roses"], {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown task 'text-to-smell'" in err
    assert "text-to-image" in err


def test_bad_param_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(["generate", "-t", "text-to-image", "x", "--param", "steps"], {})
    assert "expected key=value" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "a fox"], "--task is required"),
        (["generate", "-t", "text-to-image", "--pipeline", "text-to-video"], "not both"),
        (["generate", "--watch", "j1", "--pipeline", "text-to-video"], "drop --pipeline"),
        (["generate", "--watch", "j1", "--task", "text-to-image"], "drop --task"),
        (["generate", "--watch", "j1", "a fox"], "drop a prompt"),
        (["generate", "-t", "image-to-image", "sepia"], "needs an input file (image/*): --input"),
        (["generate", "--pipeline", "text-to-video", "x", "-p", "seed=1"], "a pipeline's steps"),
        (["generate", "-t", "image-to-image", "-i", "/nonexistent.png"], "input file not found"),
        (["generate", "-t", "image-to-image", "-i", "/tmp"], "input is a directory, not a file"),
        (["generate", "--pipeline", "nope", "x"], "unknown pipeline 'nope'; built in: speech-"),
        (["generate", "-t", "text-to-image"], "text-to-image needs a prompt: genmesh generate"),
        (["generate", "-t", "text-to-speech", " "], "text-to-speech needs a prompt"),
        (
            ["generate", "--pipeline", "text-to-video"],
            "pipeline text-to-video needs a prompt (for its text-to-image step 'image')",
        ),
        (
            ["generate", "--pipeline", "speech-to-image"],
            "pipeline speech-to-image needs an input file (audio/*): --input",
        ),
    ],
)
def test_argument_combinations(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(argv, {}) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_an_empty_input_file_is_refused_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    # No router or storage to reach: refused before any call is made.
    assert cli(["generate", "-t", "image-to-image", "sepia", "-i", str(empty)], {}) == 2
    assert capsys.readouterr().err == f"genmesh generate: input file is empty: {empty}\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([], {}) == 2
    assert "generate" in capsys.readouterr().err


def test_rpc_error_is_one_line() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="prompt is empty",
    )
    assert format_rpc_error(error) == "INVALID_ARGUMENT: prompt is empty"
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="refused"
    )
    line = format_rpc_error(down, "127.0.0.1:50051")
    assert line == "UNAVAILABLE: refused (127.0.0.1:50051) - is `genmesh up` running?"


def test_state_names_round_trip() -> None:
    for state in job_pb2.JobState.values():
        if state:
            assert state_from_name(state_name(state)) == state
    assert state_name(job_pb2.JOB_STATE_PREVIEW_READY) == "preview-ready"
    with pytest.raises(ValueError, match="unknown state"):
        state_from_name("sleeping")


@pytest.mark.parametrize(
    ("filename", "media_type", "expected"),
    [
        ("fox.png", "image/png", "fox.png"),
        ("../../etc/passwd", "text/plain", "passwd.txt"),
        ("C:\\temp\\x.wav", "audio/wav", "x.wav"),
        ("", "image/png", "a1.png"),
        ("", "audio/wav", "a1.wav"),
        ("", "application/x-unknown-thing", "a1.bin"),
        ("...", "image/png", "a1.png"),
    ],
)
def test_output_file_names_are_safe(filename: str, media_type: str, expected: str) -> None:
    asset = asset_pb2.Asset(id="a1", filename=filename, media_type=media_type)
    assert assets.file_name(asset) == expected


def test_output_names_do_not_collide(tmp_path: Path) -> None:
    taken: set[Path] = set()
    first = assets.unique_path(tmp_path, "out.png", taken)
    second = assets.unique_path(tmp_path, "out.png", taken)
    assert (first.name, second.name) == ("out.png", "out-2.png")


def render(panel: JobPanel) -> str:
    out = Console(width=100, record=True, file=io.StringIO())
    out.print(panel)
    return out.export_text()


def test_panel_shows_the_latest_state() -> None:
    panel = JobPanel()
    panel.job(
        job_pb2.Job(
            id="job-1",
            state=job_pb2.JOB_STATE_QUEUED,
            spec=job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE),
        )
    )
    panel.event(event(1, job_pb2.JOB_STATE_QUEUED, progress=job_pb2.Progress(queue_position=3)))
    text = render(panel)
    assert "job-1" in text and "text-to-image" in text and "3 ahead" in text
    panel.event(
        event(2, job_pb2.JOB_STATE_PROCESSING, progress=job_pb2.Progress(percent=40, message="s 2"))
    )
    text = render(panel)
    assert "processing" in text and "40%" in text and "s 2" in text
    assert "ahead" not in text
    # A re-attach sends the job as it is now, ahead of the events still to come: no jump.
    panel.job(job_pb2.Job(id="job-1", state=job_pb2.JOB_STATE_COMPLETED, last_sequence=4))
    assert panel.state == job_pb2.JOB_STATE_PROCESSING
    panel.event(event(3, job_pb2.JOB_STATE_COMPLETED))
    text = render(panel)
    assert "completed" in text and "100%" in text


def test_a_preview_keeps_the_progress_bar() -> None:
    panel = JobPanel()
    panel.event(
        event(1, job_pb2.JOB_STATE_PROCESSING, progress=job_pb2.Progress(percent=50, message="s 2"))
    )
    preview = asset_pb2.Asset(id="preview-1", media_type="image/png")
    panel.event(event(2, job_pb2.JOB_STATE_PREVIEW_READY, preview=preview))
    text = render(panel)
    assert "preview-ready" in text and "(1 preview)" in text
    assert "50%" in text and "s 2" in text, text


def test_a_long_progress_message_leaves_the_bar_and_percentage_whole() -> None:
    panel = JobPanel()
    message = "retrying in 0.7s: sandbox injected a failure of kind retryable (fail_rate=1)"
    panel.event(
        event(
            1, job_pb2.JOB_STATE_PROCESSING, progress=job_pb2.Progress(percent=75, message=message)
        )
    )
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(panel)
    text = out.export_text()
    [bar] = [line for line in text.splitlines() if line.startswith("progress")]
    assert "━" * 22 in bar and " 75% " in bar, text
    # Nothing of the message is lost: it goes on below.
    assert "(fail_rate=1)" in text, text


def test_a_finished_jobs_elapsed_time_is_its_own_on_every_re_attach() -> None:
    created = job_pb2.Job(id="job-1", state=job_pb2.JOB_STATE_COMPLETED, last_sequence=2)
    created.create_time.FromSeconds(1_000_000)
    created.update_time.FromSeconds(1_000_002)
    done = event(2, job_pb2.JOB_STATE_COMPLETED)
    done.time.FromSeconds(1_000_002)
    panel = JobPanel()
    # Attaching to a finished job: the job now, then its events replayed.
    panel.job(created)
    panel.event(event(1, job_pb2.JOB_STATE_QUEUED))
    panel.event(done)
    assert panel.elapsed() == 2.0


def rows(text: str, label: str) -> list[str]:
    """The panel's rows with `label`, the label left out."""
    return [
        line.removeprefix(label).strip()
        for line in text.splitlines()
        if line.startswith(f"{label} ")
    ]


def test_why_a_job_was_handed_back_stays_beside_the_restart_until_the_run_moves_on() -> None:
    lost = "worker w-1 was lost (its NATS connection closed); the job goes to another worker"
    panel = JobPanel()
    progress = job_pb2.Progress(percent=40, message="step 2/5")
    panel.event(event(1, job_pb2.JOB_STATE_PROCESSING, progress=progress))
    panel.event(
        event(
            2,
            job_pb2.JOB_STATE_PROCESSING,
            progress=job_pb2.Progress(message=lost),
            handed_back=True,
        )
    )
    text = render(panel)
    assert rows(text, "restart") == [lost] and "step 2/5" not in text, text
    restarted = job_pb2.Progress(percent=0, message="restarted (delivery 2)")
    panel.event(event(3, job_pb2.JOB_STATE_PROCESSING, progress=restarted))
    text = render(panel)
    # The restart line alone would say that it restarted, never why.
    assert "restarted (delivery 2)" in text and rows(text, "restart") == [lost], text
    panel.event(
        event(4, job_pb2.JOB_STATE_PROCESSING, progress=job_pb2.Progress(percent=20, message="s 1"))
    )
    text = render(panel)
    assert "s 1" in text and not rows(text, "restart") and lost not in text, text


def test_a_restart_nobody_explained_shows_no_why_and_an_end_drops_one() -> None:
    panel = JobPanel()
    step = job_pb2.Progress(percent=40, message="step 2/5")
    panel.event(event(1, job_pb2.JOB_STATE_PROCESSING, progress=step))
    # A worker gone without a word (JetStream sent the job on after its ack wait): the last
    # progress message is no reason for the restart.
    restarted = job_pb2.Progress(percent=0, message="restarted (delivery 2)")
    panel.event(event(2, job_pb2.JOB_STATE_PROCESSING, progress=restarted))
    assert not rows(render(panel), "restart")
    stopping = job_pb2.Progress(message="the worker is stopping; the job goes back to the queue")
    panel.event(event(3, job_pb2.JOB_STATE_PROCESSING, progress=stopping, handed_back=True))
    panel.event(event(4, job_pb2.JOB_STATE_FAILED))
    assert rows(render(panel), "restart") == []


def test_panel_shows_each_pipeline_step() -> None:
    panel = JobPanel()
    run = job_pb2.PipelineRun(
        name="text-to-video",
        steps=[
            job_pb2.PipelineStepStatus(name="image", state=job_pb2.JOB_STATE_QUEUED),
            job_pb2.PipelineStepStatus(name="video", state=job_pb2.JOB_STATE_QUEUED),
        ],
    )
    panel.job(job_pb2.Job(id="job-1", state=job_pb2.JOB_STATE_QUEUED, pipeline=run))
    panel.event(event(1, job_pb2.JOB_STATE_QUEUED))
    text = render(panel)
    assert "pipeline text-to-video" in text and "image ·" in text and "video ·" in text
    started = event(2, job_pb2.JOB_STATE_PROCESSING)
    started.step, started.step_job_id = "image", "job-2"
    panel.event(started)
    done = event(3, job_pb2.JOB_STATE_PROCESSING, progress=job_pb2.Progress(message="image done"))
    done.step, done.output_text = "image", "x"
    panel.event(done)
    video = event(4, job_pb2.JOB_STATE_PROCESSING)
    video.step = "video"
    panel.event(video)
    text = render(panel)
    assert "image ✓" in text and "video …" in text and "image done" in text


def _up_args(*argv: str) -> argparse.Namespace:
    return build_parser({}).parse_args(["up", *argv])


def test_up_plan_wires_addresses(tmp_path: Path) -> None:
    args = _up_args("--host", "0.0.0.0", "--grpc-port", "6001", "--data-dir", str(tmp_path / "d"))
    plan = make_plan(args, {"GENMESH_LOG_LEVEL": "DEBUG"})
    by_name = {s.name: s for s in plan.services}
    assert by_name["router"].listen == "0.0.0.0:6001"
    # Clients on this machine reach a wildcard listener over loopback.
    assert plan.env["GENMESH_ROUTER_ADDR"] == "127.0.0.1:6001"
    assert plan.env["GENMESH_STORAGE_ADDR"] == "127.0.0.1:50052"
    assert plan.env["GENMESH_PROMPT_ADDR"] == "127.0.0.1:50053"
    assert plan.env["GENMESH_DATA_DIR"] == str((tmp_path / "d").resolve())
    assert plan.env["GENMESH_NATS_URL"] == f"nats://127.0.0.1:{plan.nats_port}"
    assert plan.env["GENMESH_LOG_LEVEL"] == "DEBUG"
    assert plan.child_env(by_name["storage"])["GENMESH_LISTEN"] == "0.0.0.0:50052"
    assert [[s.name for s in tier] for tier in plan.tiers()][:3] == [
        ["storage", "prompt"],
        ["router"],
        ["worker", *(["gateway"] if "gateway" in by_name else [])],
    ]


@pytest.mark.parametrize(
    ("argv", "env", "drain"),
    [
        ((), {}, "6"),  # the worker's 10 s cut to fit up's 10 s stop timeout
        (("--stop-timeout", "30"), {}, "10"),
        ((), {"GENMESH_WORKER_DRAIN_TIMEOUT": "2.5"}, "2.5"),
        (("--stop-timeout", "3"), {"GENMESH_WORKER_DRAIN_TIMEOUT": "60"}, "0"),
    ],
)
def test_up_fits_the_workers_drain_into_its_stop_timeout(
    tmp_path: Path, argv: tuple[str, ...], env: dict[str, str], drain: str
) -> None:
    plan = make_plan(_up_args("--data-dir", str(tmp_path), *argv), env)
    assert plan.env["GENMESH_WORKER_DRAIN_TIMEOUT"] == drain


@pytest.mark.parametrize("host", ["nonexistent.invalid", "192.0.2.1"], ids=["name", "address"])
def test_up_on_a_host_it_cannot_listen_on_says_so_in_one_line(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without --worker-port the free port for the worker was looked for first: a traceback.
    argv = ["up", "--data-dir", str(tmp_path / "d"), "--host", host]
    assert cli(argv, {}) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"genmesh up: cannot listen on --host {host}: ")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
@pytest.mark.parametrize("flag", ["--start-timeout", "--stop-timeout"])
def test_up_timeouts_must_be_positive_seconds(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Taken before: a negative or nan stop timeout killed every process with no grace.
    with pytest.raises(SystemExit) as exit_info:
        cli(["up", "--data-dir", str(tmp_path / "d"), flag, value], {})
    assert exit_info.value.code == 2
    assert "expected a number of seconds above 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_up_uses_external_nats_when_set(tmp_path: Path) -> None:
    plan = make_plan(_up_args("--data-dir", str(tmp_path)), {"GENMESH_NATS_URL": "nats://n:4222"})
    assert plan.external_nats_url == "nats://n:4222"
    assert plan.env["GENMESH_NATS_URL"] == "nats://n:4222"


async def test_up_finds_an_external_nats_named_among_a_clusters_servers(
    tmp_path: Path, nats_url: str
) -> None:
    # Comma-separated, as other NATS clients take a cluster; the first is down.
    servers = f"nats://127.0.0.1:{free_port()},{nats_url}"
    plan = make_plan(_up_args("--data-dir", str(tmp_path)), {"GENMESH_NATS_URL": servers})
    supervisor = Supervisor(plan, start_timeout=10, stop_timeout=1)
    await asyncio.wait_for(supervisor._nats_ready(plan.nats_url, None), 10)


def test_up_data_dir_defaults_from_environment(tmp_path: Path) -> None:
    args = build_parser({"GENMESH_DATA_DIR": str(tmp_path / "x")}).parse_args(["up"])
    assert args.data_dir == tmp_path / "x"


# --- follow, re-attach and download against a scripted router and storage ---------------


def png_bytes(width: int = 4, height: int = 3) -> bytes:
    """A tiny valid PNG, built by hand so the fake storage serves real image bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def event(seq: int, state: job_pb2.JobState.ValueType, **kw: object) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(job_id="job-1", sequence=seq, state=state, provider="fake", **kw)  # type: ignore[arg-type]


@dataclass
class ScriptedMesh(
    generate_service_pb2_grpc.GenerateServiceServicer,
    job_service_pb2_grpc.JobServiceServicer,
    asset_service_pb2_grpc.AssetServiceServicer,
    provider_service_pb2_grpc.ProviderServiceServicer,
):
    """A router and storage that follow a script: break a stream, replay sloppily, fail."""

    events: list[job_pb2.JobEvent]
    # Generate sends this many events, then the stream breaks (None: it does not break).
    break_after: int | None = None
    # Generate keeps the stream open after its events, as for a job still running.
    hang: bool = False
    # Generate refuses with this status before doing anything.
    refuse: tuple[grpc.StatusCode, str] | None = None
    blob: bytes = b""
    generate_calls: int = 0
    watch_after: list[int] = field(default_factory=list)

    def job(self) -> job_pb2.Job:
        return job_pb2.Job(id="job-1", state=job_pb2.JOB_STATE_QUEUED, provider="fake")

    async def Generate(
        self, request: generate_service_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generate_service_pb2.GenerateResponse]:
        self.generate_calls += 1
        if self.refuse:
            await context.abort(*self.refuse)
        yield generate_service_pb2.GenerateResponse(job=self.job())
        for ev in self.events[: self.break_after]:
            yield generate_service_pb2.GenerateResponse(event=ev)
        if self.break_after is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "router restarting")
        if self.hang:
            await asyncio.Event().wait()

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        self.watch_after.append(request.after_sequence)
        yield job_service_pb2.WatchJobResponse(job=self.job())
        # Sloppy on purpose: replays one event too many; the client must not show it twice.
        for ev in self.events:
            if ev.sequence >= request.after_sequence:
                yield job_service_pb2.WatchJobResponse(event=ev)

    async def DownloadAsset(
        self, request: asset_service_pb2.DownloadAssetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asset_service_pb2.DownloadAssetResponse]:
        yield asset_service_pb2.DownloadAssetResponse(asset=self.asset())
        data = self.blob[request.offset :]
        for i in range(0, len(data), 10):
            yield asset_service_pb2.DownloadAssetResponse(chunk=data[i : i + 10])

    def asset(self) -> asset_pb2.Asset:
        return asset_pb2.Asset(
            id="asset-1", media_type="image/png", size_bytes=len(self.blob), job_id="job-1"
        )

    async def ListProviders(
        self,
        request: provider_service_pb2.ListProvidersRequest,
        context: grpc.aio.ServicerContext,
    ) -> provider_service_pb2.ListProvidersResponse:
        def provider(name: str, circuit: int) -> provider_service_pb2.Provider:
            health = provider_service_pb2.ProviderHealth(
                status=provider_service_pb2.PROVIDER_STATUS_AVAILABLE,
                live_workers=1,
                circuit=circuit,  # type: ignore[arg-type]
            )
            return provider_service_pb2.Provider(
                name=name, family="sandbox", tasks=[job_pb2.TASK_TEXT_TO_IMAGE], health=health
            )

        return provider_service_pb2.ListProvidersResponse(
            providers=[
                provider("steady", provider_service_pb2.CIRCUIT_STATE_CLOSED),
                provider("flaky", provider_service_pb2.CIRCUIT_STATE_OPEN),
            ]
        )


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedMesh, str]]:
    blob = png_bytes()
    # Only the methods the CLI calls; grpc answers UNIMPLEMENTED for the rest.
    mesh = ScriptedMesh(events=[], blob=blob)  # type: ignore[abstract]
    mesh.events = [
        event(1, job_pb2.JOB_STATE_QUEUED, progress=job_pb2.Progress(queue_position=2)),
        event(2, job_pb2.JOB_STATE_PROCESSING, progress=job_pb2.Progress(percent=40)),
        event(3, job_pb2.JOB_STATE_PROCESSING, progress=job_pb2.Progress(percent=80)),
        event(4, job_pb2.JOB_STATE_COMPLETED, assets=[mesh.asset()]),
    ]
    server = grpc.aio.server()
    generate_service_pb2_grpc.add_GenerateServiceServicer_to_server(mesh, server)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(mesh, server)
    asset_service_pb2_grpc.add_AssetServiceServicer_to_server(mesh, server)
    provider_service_pb2_grpc.add_ProviderServiceServicer_to_server(mesh, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield mesh, f"127.0.0.1:{port}"
    finally:
        await server.stop(1)


@dataclass
class Recorder:
    seen: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def job(self, job: job_pb2.Job) -> None:
        pass

    def event(self, event: job_pb2.JobEvent) -> None:
        self.seen.append(event.sequence)

    def note(self, text: str) -> None:
        self.notes.append(text)


async def test_follow_reattaches_after_a_broken_stream(
    scripted: tuple[ScriptedMesh, str],
) -> None:
    mesh, address = scripted
    mesh.break_after = 2
    recorder = Recorder()
    async with grpc.aio.insecure_channel(address) as ch:
        follower = Follower(
            generate_service_pb2_grpc.GenerateServiceStub(ch),
            job_service_pb2_grpc.JobServiceStub(ch),
            recorder,
        )
        spec = job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="x", idempotency_key="k")
        outcome = await follower.generate(spec)
    assert recorder.seen == [1, 2, 3, 4]
    assert mesh.generate_calls == 1
    assert mesh.watch_after == [2]
    assert outcome.state == job_pb2.JOB_STATE_COMPLETED
    assert [a.id for a in outcome.assets] == ["asset-1"]
    assert any("re-attaching" in note for note in recorder.notes)


async def test_follow_says_once_that_the_router_is_lost_and_gives_up_with_the_way_back() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as ch:
        recorder = Recorder()
        follower = Follower(
            generate_service_pb2_grpc.GenerateServiceStub(ch),
            job_service_pb2_grpc.JobServiceStub(ch),
            recorder,
            attach_timeout=1.5,
        )
        with pytest.raises(StreamStalled) as stalled:
            await follower.watch("job-1")
    # Several retries in that time; each used to say 'stream broke ... re-attaching' again.
    assert recorder.notes == ["lost the router (UNAVAILABLE); re-attaching until it is back"]
    assert str(stalled.value).startswith("job job-1: lost the router for 1.5s (UNAVAILABLE: ")
    assert str(stalled.value).endswith("re-attach with `genmesh generate --watch job-1`")


@contextmanager
def sigint_at_its_default() -> Iterator[None]:
    """Children started meanwhile get SIGINT at its default, as a terminal's foreground job
    does, also where this test run ignores it (a non-interactive shell's `pytest &`, CI
    runners): an ignored signal stays ignored across exec, so Ctrl-C would never reach them."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    # Caught rather than ignored, which exec resets to the default; caught by a handler that
    # does nothing, so this run still shrugs SIGINT off meanwhile.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


async def start_cli(
    *argv: str, cwd: Path, extra_env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """The real console entry point in a subprocess, as a user runs it from a terminal (no
    GENMESH_* settings, plus `extra_env`; Ctrl-C reaches it), its output piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    env.update(extra_env or {})
    with sigint_at_its_default():
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "genmesh_cli",
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )


async def run_cli(
    *argv: str, cwd: Path, extra_env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """start_cli to its end: exit code, stdout, stderr."""
    process = await start_cli(*argv, cwd=cwd, extra_env=extra_env)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_generate_downloads_outputs(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path
) -> None:
    mesh, address = scripted
    mesh.break_after = 1
    code, out, err = await run_cli(
        "generate",
        "-t",
        "text-to-image",
        "a red fox in snow",
        "--router",
        address,
        "--storage",
        address,
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert code == 0, err
    saved = tmp_path / "out" / "job-1" / "asset-1.png"
    assert saved.read_bytes() == mesh.blob
    assert "asset-1.png" in out
    assert "image/png" in out
    assert "completed" in out


async def test_generate_json_lines(scripted: tuple[ScriptedMesh, str], tmp_path: Path) -> None:
    _, address = scripted
    code, out, err = await run_cli(
        "generate",
        "-t",
        "text-to-image",
        "fox",
        "--router",
        address,
        "--no-download",
        "--json",
        cwd=tmp_path,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith('{"job":')
    assert [line.startswith('{"event":') for line in lines[1:]] == [True] * 4
    assert not (tmp_path / "genmesh-output").exists()


async def test_ctrl_c_detaches_with_stdout_still_json_lines(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path
) -> None:
    mesh, address = scripted
    mesh.events, mesh.hang = mesh.events[:2], True
    process = await start_cli(
        "generate", "-t", "text-to-image", "fox", "--router", address, "--json", cwd=tmp_path
    )
    assert process.stdout is not None
    lines = [await asyncio.wait_for(process.stdout.readline(), 30) for _ in range(3)]
    process.send_signal(signal.SIGINT)
    rest, err = await asyncio.wait_for(process.communicate(), 30)
    lines += rest.splitlines()
    assert all(json.loads(line) for line in lines if line.strip())
    assert (
        "detached from job job-1; it keeps running. Re-attach: genmesh generate --watch job-1"
        in err.decode().splitlines()[-1]
    )


@pytest.mark.parametrize(
    ("final", "code", "message"),
    [
        (
            event(
                2,
                job_pb2.JOB_STATE_FAILED,
                error=job_pb2.JobError(code="provider_error", message="GPU on fire"),
            ),
            1,
            "job job-1 failed: provider_error: GPU on fire (provider fake)",
        ),
        (
            event(2, job_pb2.JOB_STATE_CANCELLED, error=job_pb2.JobError(message="by user")),
            2,
            "job job-1 was cancelled: by user",
        ),
    ],
)
async def test_generate_exit_code_tells_how_the_job_ended(
    scripted: tuple[ScriptedMesh, str],
    tmp_path: Path,
    final: job_pb2.JobEvent,
    code: int,
    message: str,
) -> None:
    mesh, address = scripted
    mesh.events = [mesh.events[0], final]
    got, _, err = await run_cli(
        "generate", "-t", "text-to-image", "fox", "--router", address, cwd=tmp_path
    )
    assert got == code
    assert message in " ".join(err.split())


async def test_rpc_errors_are_one_clear_line(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path
) -> None:
    mesh, address = scripted
    mesh.refuse = (grpc.StatusCode.INVALID_ARGUMENT, "prompt is too long")
    code, out, err = await run_cli(
        "generate", "-t", "text-to-image", "x", "--router", address, cwd=tmp_path
    )
    assert code == 1
    assert err == f"genmesh generate: INVALID_ARGUMENT: prompt is too long ({address})\n"
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("job", "name", "message"),
    [
        ("-t=image-to-image", "note.txt", "note.txt is text/plain; image-to-image takes image/*"),
        ("-t=speech-to-text", "photo.png", "photo.png is image/png; speech-to-text takes audio/*"),
        ("-t=text-to-image", "photo.png", "text-to-image takes no input file; drop --input"),
        (
            "--pipeline=speech-to-image",
            "photo.png",
            "photo.png is image/png; pipeline speech-to-image takes audio/*",
        ),
        (
            "--pipeline=text-to-video",
            "photo.png",
            "pipeline text-to-video takes no input file; drop --input",
        ),
    ],
)
async def test_an_input_the_task_cannot_take_is_refused_before_uploading(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path, job: str, name: str, message: str
) -> None:
    _, address = scripted
    (tmp_path / name).write_bytes(b"hello")
    code, _, err = await run_cli(
        "generate", job, "x", "--input", name, "--router", address, "--storage", address,
        cwd=tmp_path,
    )  # fmt: skip
    # The scripted storage has no UploadAsset: an upload would have failed as UNIMPLEMENTED.
    assert (code, err) == (2, f"genmesh generate: {message}\n")


async def test_an_out_dir_that_cannot_be_written_is_refused_before_the_job(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path
) -> None:
    mesh, address = scripted
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "prompts.txt").write_text("a fox\n")
    for out, message in [
        ("taken", "--out taken is not a directory"),
        ("taken/sub", "--out taken/sub: taken is not a directory one can write in"),
    ]:
        for command in (
            ["generate", "-t", "text-to-image", "x"],
            ["batch", "-t", "text-to-image", "prompts.txt"],
        ):
            code, _, err = await run_cli(
                *command, "--router", address, "--storage", address, "--out", out, cwd=tmp_path
            )
            assert (code, err) == (2, f"genmesh {command[0]}: {message}\n")
    assert mesh.generate_calls == 0


async def test_outputs_that_cannot_be_saved_are_one_clear_line(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path
) -> None:
    _, address = scripted
    # The job's own directory is taken by a file: found only once the job has ended.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "job-1").write_text("a file")
    code, _, err = await run_cli(
        "generate", "-t", "text-to-image", "x", "--router", address, "--storage", address,
        "--out", "out", cwd=tmp_path,
    )  # fmt: skip
    assert code == 1
    assert "Traceback" not in err
    assert " ".join(err.split()) == (
        "genmesh generate: cannot save job job-1's outputs in out/job-1: File exists; they "
        "stay in storage: genmesh generate --watch job-1 --out DIR"
    )


async def test_unreachable_router_is_one_clear_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, _, err = await run_cli("jobs", "--router", address, cwd=tmp_path)
    assert code == 1
    assert err.startswith("genmesh jobs: UNAVAILABLE: ")
    assert err.endswith(f"({address}) - is `genmesh up` running?\n")
    assert err.count("\n") == 1


# --- the real mesh: genmesh up, then genmesh generate ------------------------------------


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may contain spaces) start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def log_tails(data_dir: Path) -> str:
    parts = []
    for log in sorted((data_dir / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-25:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)


@dataclass
class Up:
    """A running `genmesh up`: its addresses, its ready banner and the processes it started."""

    router: str
    storage: str
    banner: str
    data_dir: Path
    pids: list[int]
    process: asyncio.subprocess.Process
    errors: Path


UP_PORT_FLAGS = ("--grpc-port", "--storage-port", "--prompt-port", "--http-port", "--worker-port")


@contextmanager
def up_ports() -> Iterator[dict[str, int]]:
    """Ports for `genmesh up`'s services, held while the block runs (tests.infra.reserved_port),
    so none goes to another process before up binds it or while up restarts a service."""
    with ExitStack() as held:
        yield {flag: held.enter_context(reserved_port(any_server=True)) for flag in UP_PORT_FLAGS}


def up_command(ports: dict[str, int], extra: Sequence[str] = ()) -> list[str]:
    """`genmesh up` on `ports` with `extra` arguments, as a user runs it."""
    flags = [str(x) for pair in ports.items() for x in pair]
    return [sys.executable, "-m", "genmesh_cli", "up", *flags, *extra]


def clean_env(data_dir: Path) -> dict[str, str]:
    """This environment without GENMESH_* settings (so `up` starts its own nats-server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    env["GENMESH_DATA_DIR"] = str(data_dir)
    return env


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@asynccontextmanager
async def genmesh_up(
    tmp_path: Path, env: dict[str, str], extra: Sequence[str] = ()
) -> AsyncIterator[Up]:
    """`genmesh up` (with `extra` arguments) on free ports in `env`, once its banner says it
    is ready; stopped on the way out if the caller has not stopped it."""
    with ExitStack() as held:
        async with _up_on(held, tmp_path, env, extra) as up:
            yield up


@asynccontextmanager
async def _up_on(
    held: ExitStack, tmp_path: Path, env: dict[str, str], extra: Sequence[str]
) -> AsyncIterator[Up]:
    data_dir = Path(env["GENMESH_DATA_DIR"])
    errors = tmp_path / "up.err"
    for attempt in range(PORT_RACE_ATTEMPTS):
        # Ports of its own for each attempt, all held until the test is done with up.
        ports = held.enter_context(up_ports())
        with errors.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *up_command(ports, extra),
                cwd=tmp_path,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        banner: list[str] = []
        try:
            await asyncio.wait_for(_read_banner(process, banner), 120)
            break
        except (AssertionError, TimeoutError) as error:
            # Exited by itself (not stuck): stopped in order, its children and lock gone.
            exited = isinstance(error, AssertionError)
            await _stopped(process)
            said = errors.read_text()
            # Another test's process that picked a port before binding it can take up's
            # nats-server's (up picks it so) or a held one (servers may share those until
            # one listens); new ports then, rather than a failure that is not the test's.
            raced = any(race in said for race in PORT_RACES)
            if exited and raced and attempt + 1 < PORT_RACE_ATTEMPTS:
                continue
            raise AssertionError(
                f"{error}\nstdout:\n{''.join(banner)}\nstderr:\n{said}\n{log_tails(data_dir)}"
            ) from None
    try:
        yield Up(
            router=f"127.0.0.1:{ports['--grpc-port']}",
            storage=f"127.0.0.1:{ports['--storage-port']}",
            banner="".join(banner),
            data_dir=data_dir,
            pids=children_of(process.pid),
            process=process,
            errors=errors,
        )
    finally:
        await _stopped(process)


async def _stopped(process: asyncio.subprocess.Process) -> None:
    """`genmesh up` stopped as Ctrl-C would, killed only if that takes over 30 s."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
    await process.wait()


PORT_RACE_ATTEMPTS = 3
PORT_RACES = ("Failed to bind to address", "is in use", "address already in use")


async def _read_banner(process: asyncio.subprocess.Process, banner: list[str]) -> None:
    assert process.stdout is not None
    while line := (await process.stdout.readline()).decode():
        banner.append(line)
        if line.startswith("Ctrl-C"):
            return
    raise AssertionError("genmesh up exited before it was ready")


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_up_and_generate(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # A clean environment: no GENMESH_NATS_URL, so `up` starts its private nats-server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    env["GENMESH_DATA_DIR"] = str(data_dir)
    async with genmesh_up(tmp_path, env) as up:
        table = up.banner
        router, storage = up.router, up.storage
        assert router in table and storage in table
        assert f"logs: {data_dir.resolve() / 'logs'}" in table
        pids = up.pids
        # storage, prompt, router, worker, nats-server (+ the gateway when it exists).
        assert len(pids) >= 5, table

        code, out, err = await run_cli(
            "generate",
            "--task",
            "text-to-image",
            "a red fox in snow",
            "--router",
            router,
            "--storage",
            storage,
            "--out",
            str(tmp_path / "out"),
            cwd=tmp_path,
        )
        assert code == 0, f"{out}\n{err}\n{log_tails(data_dir)}"
        pngs = list((tmp_path / "out").glob("*/*.png"))
        assert pngs, out
        with Image.open(io.BytesIO(pngs[0].read_bytes())) as image:
            image.verify()
            assert image.format == "PNG"

        up.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.process.wait(), 20) == 0, (tmp_path / "up.err").read_text()
        assert [pid for pid in pids if alive(pid)] == []


async def test_providers_table_shows_each_circuit(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path
) -> None:
    _, address = scripted
    code, out, err = await run_cli("providers", "--router", address, cwd=tmp_path)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert "circuit" in rows["provider"]
    assert rows["steady"][3] == "closed"
    assert rows["flaky"][3] == "open"


# What rich reads to take its output for an 80-column terminal's (the default size).
TERMINAL_80 = {"FORCE_COLOR": "1", "COLUMNS": "80", "TERM": "xterm"}


def plain(text: str) -> list[str]:
    """The lines a terminal shows, colours dropped and trailing blanks trimmed."""
    return [line.rstrip() for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).splitlines()]


async def test_providers_on_a_narrow_terminal_show_every_field_whole(
    scripted: tuple[ScriptedMesh, str], tmp_path: Path
) -> None:
    _, address = scripted
    code, out, err = await run_cli(
        "providers", "--router", address, cwd=tmp_path, extra_env=TERMINAL_80
    )
    assert code == 0, err
    lines = plain(out)
    assert max(len(line) for line in lines) <= 80, lines
    # No column dropped or cut: the flaky provider's block holds each of its fields.
    flaky = lines[lines.index("provider  flaky") :]
    assert flaky[:8] == [
        "provider  flaky",
        "family    sandbox",
        "status    available",
        "circuit   open",
        "workers   1",
        "running   0",
        "cost/job  $0.0000",
        "tasks     text-to-image",
    ], lines


UPLOAD_BYTES = 2 * 1024 * 1024


@pytest.fixture
def ports() -> Iterator[dict[str, int]]:
    """Ports for a `genmesh up` of the test's own, held throughout (see up_ports)."""
    with up_ports() as held:
        yield held


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_children_of_a_killed_up_exit_and_hold_the_data_dir_until_they_have(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(data_dir)
    # A stopping server waits this long for calls still running: storage, serving the
    # upload below, stands for a child that takes its time to stop.
    env["GENMESH_SHUTDOWN_GRACE"] = "120"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    async with (
        genmesh_up(tmp_path / "first", env) as up,
        grpc.aio.insecure_channel(up.storage) as channel,
    ):
        pids = up.pids
        [storage] = [pid for pid in pids if "services.storage" in command_line(pid)]
        finish = asyncio.Event()

        async def parts() -> AsyncIterator[asset_service_pb2.UploadAssetRequest]:
            metadata = asset_service_pb2.UploadMetadata(media_type="application/octet-stream")
            yield asset_service_pb2.UploadAssetRequest(metadata=metadata)
            yield asset_service_pb2.UploadAssetRequest(chunk=bytes(UPLOAD_BYTES))
            await finish.wait()

        upload = asset_service_pb2_grpc.AssetServiceStub(channel).UploadAsset(parts())
        try:
            staging = data_dir / "blobs" / "tmp"
            # Past what storage keeps in memory: it is spooling the upload to a file.
            await eventually(lambda: staging.is_dir() and any(staging.iterdir()), within=30)
            up.process.kill()
            await up.process.wait()

            # Every other child goes with the supervisor (they used to live on, orphaned).
            def only_storage_left() -> bool:
                return [pid for pid in pids if alive(pid)] == [storage]

            await eventually(only_storage_left, within=60)
            # A second mesh cannot start on the data dir while that child still uses it, and
            # leaves its logs alone.
            code, err = await up_once(tmp_path / "second", env, ports)
            assert code == 1, err
            assert "another `genmesh up` (or a process it started) is using" in err, err
            assert not (data_dir / "logs" / "storage.log.1").exists()

            finish.set()
            assert (await upload).asset.size_bytes == UPLOAD_BYTES
            await eventually(lambda: not any(alive(pid) for pid in pids), within=60)
        finally:
            upload.cancel()
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)

    # Once they are gone, the next `genmesh up` on that data dir starts.
    async with genmesh_up(tmp_path / "second", env) as again:
        again.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(again.process.wait(), 30) == 0, again.errors.read_text()
        assert [pid for pid in again.pids if alive(pid)] == []


async def up_once(cwd: Path, env: dict[str, str], ports: dict[str, int]) -> tuple[int, str]:
    """`genmesh up` expected to give up at once: its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        *up_command(ports),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.wait(), 30)
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_ctrl_c_while_up_is_starting_stops_it_without_a_traceback(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    data_dir = tmp_path / "data"
    errors = tmp_path / "up.err"
    with errors.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *up_command(ports),
            cwd=tmp_path,
            env=clean_env(data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    try:
        # The first tier is being started, and waited for.
        await eventually(lambda: (data_dir / "logs" / "storage.log").exists(), within=60)
        pids = children_of(process.pid)
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0, errors.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = errors.read_text()
    assert "genmesh stopped" in stderr
    assert "Traceback" not in stderr and "failed" not in stderr, stderr
    assert [pid for pid in pids if alive(pid)] == []
