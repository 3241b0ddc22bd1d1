"""`genmesh up` with no keys and no network serves the offline providers: real processes,
real espeak-ng speech, PocketSphinx transcription and Pillow styles through the whole mesh."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from genmesh.v1 import (
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from services.common.parameters import dict_to_struct
from services.providers.config import load_catalog
from services.providers.sandbox import media
from tests.cli.test_cli import Up, alive, genmesh_up, log_tails, run_cli
from tests.infra import eventually


def offline_env(data_dir: Path) -> dict[str, str]:
    """This environment without GENMESH_* settings or any provider key from the catalog."""
    keys = {c.api_key_env for c in load_catalog(None, {}).values() if c.api_key_env}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_") and k not in keys}
    env["GENMESH_DATA_DIR"] = str(data_dir)
    return env


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    """`genmesh up` as a user runs it (its own nats-server, default worker providers)."""
    async with genmesh_up(tmp_path, offline_env(tmp_path / "data")) as up:
        yield up
        up.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.process.wait(), 30) == 0, up.errors.read_text()
        assert [pid for pid in up.pids if alive(pid)] == []


async def generate(up: Up, out: Path, *argv: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`genmesh generate ... --json`: the final event and the saved outputs."""
    code, stdout, stderr = await run_cli(
        "generate",
        *argv,
        "--router",
        up.router,
        "--storage",
        up.storage,
        "--out",
        str(out),
        "--json",
        cwd=out.parent,
    )
    assert code == 0, f"{stdout}\n{stderr}\n{log_tails(up.data_dir)}"
    lines = [json.loads(line) for line in stdout.splitlines()]
    events = [line["event"] for line in lines if "event" in line]
    saved = [line for line in lines if "path" in line]
    return events[-1], saved


def speech_seconds(path: Path) -> tuple[int, float, float]:
    """Sample rate, duration and peak level of a 16-bit WAV file."""
    with wave.open(str(path)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768
    return rate, samples.size / rate, float(np.abs(samples).max())


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_up_serves_offline_providers_with_no_keys(up: Up, tmp_path: Path) -> None:
    assert "providers: auto" in up.banner

    # The command from the issue, with nothing else: the router picks espeak-ng.
    final, saved = await generate(up, tmp_path / "out", "--task", "text-to-speech", "hello world")
    assert final["state"] == "JOB_STATE_COMPLETED" and final["provider"] == "espeak"
    [wav] = saved
    assert wav["media_type"] == "audio/wav"
    rate, seconds, peak = speech_seconds(Path(wav["path"]))
    assert rate == 22_050 and 0.5 < seconds < 5 and peak > 0.1

    # That speech's way back: spoken clearly, then transcribed by PocketSphinx.
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    _, [spoken] = await generate(
        up,
        tmp_path / "out",
        "-t",
        "text-to-speech",
        " ".join(numbers) + ".",
        "-p",
        "variant=f2",
        "-p",
        "speed=140",
    )
    final, _ = await generate(
        up, tmp_path / "out", "-t", "speech-to-text", "--input", spoken["path"]
    )
    assert final["provider"] == "pocketsphinx"
    heard = final["outputText"].split()
    assert sum(n in heard for n in numbers) >= 8, heard

    # An uploaded picture restyled by Pillow, at the size asked for.
    photo = tmp_path / "photo.png"
    photo.write_bytes(media.text_to_image("a lighthouse", 5, 320, 240))
    final, [styled] = await generate(
        up,
        tmp_path / "out",
        "-t",
        "image-to-image",
        "in sepia",
        "--input",
        str(photo),
        "--provider",
        "pillow",
        "-p",
        "style=sepia",
        "-p",
        "width=160",
        "-p",
        "height=160",
    )
    assert final["state"] == "JOB_STATE_COMPLETED"
    with Image.open(styled["path"]) as image:
        assert image.format == "PNG" and image.size == (160, 160)

    # An input that is there but cannot be read: one line saying so, no traceback.
    code, stdout, stderr = await run_cli(
        "generate",
        "-t",
        "image-to-image",
        "in sepia",
        "--input",
        "/proc/self/mem",  # a file, whose first bytes are unmapped memory: EIO
        "--router",
        up.router,
        "--storage",
        up.storage,
        cwd=tmp_path,
    )
    assert code != 0 and "upload of /proc/self/mem: Input/output error" in stderr, stderr
    assert "Traceback" not in stderr

    # Every offline provider is listed with a live worker and no reason against it.
    code, stdout, stderr = await run_cli("providers", "--router", up.router, "--json", cwd=tmp_path)
    assert code == 0, stderr
    listed = {p["name"]: p for p in map(json.loads, stdout.splitlines())}
    for name in ("espeak", "pocketsphinx", "pillow", "sandbox"):
        health = listed[name]["health"]
        assert health["status"] == "PROVIDER_STATUS_AVAILABLE", (name, health)
        assert health["liveWorkers"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_ctrl_c_hands_a_running_job_back_to_the_next_start(tmp_path: Path) -> None:
    env = offline_env(tmp_path / "data")
    # Far beyond the wait for the job below: only a hand-back, not the ack wait, brings it.
    env["GENMESH_WORKER_ACK_WAIT"] = "120"
    spec = job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a long one",
        provider="sandbox",
        parameters=dict_to_struct({"latency_ms": 120_000, "steps": 100}),
    )
    async with genmesh_up(tmp_path, env) as up:
        async with grpc.aio.insecure_channel(up.router) as channel:
            submitted = await generate_service_pb2_grpc.GenerateServiceStub(channel).Submit(
                generate_service_pb2.SubmitRequest(spec=spec)
            )
            job_id = submitted.job.id
            jobs = job_service_pb2_grpc.JobServiceStub(channel)

            async def running() -> bool:
                reply = await jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id))
                return reply.job.state == job_pb2.JOB_STATE_PROCESSING

            await eventually(running, within=30)
        up.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.process.wait(), 60) == 0
        # The worker stopped by itself, within up's stop timeout: it waited for the job as
        # long as that allows, then handed it back, and says which job, in its log and here.
        said = up.errors.read_text()
        assert "did not stop" not in said, said
        handed = f"handed back 1 unfinished job to the queue for another worker: {job_id}"
        assert f"worker: {handed}" in said, said
        assert handed in (up.data_dir / "logs" / "worker.log").read_text()

    async with genmesh_up(tmp_path, env) as again, grpc.aio.insecure_channel(again.router) as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)

        async def redelivered() -> None:
            # Its events from the first: the start of the new run shows however soon it
            # came (the job's progress moves on from it within a second).
            call = jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id))
            async for reply in call:
                if reply.event.progress.message.startswith("restarted (delivery 2)"):
                    call.cancel()
                    return

        # Handed back, it starts again at once; a killed worker's job would wait out the
        # ack wait first.
        await asyncio.wait_for(redelivered(), 20)
        await jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job_id))
        again.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(again.process.wait(), 60) == 0
