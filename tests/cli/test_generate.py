"""`genmesh generate` as a user runs it (a subprocess) against a real running mesh."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import signal
from pathlib import Path

import grpc
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2
from services.common.parameters import dict_to_struct
from services.common.tasks import task_from_name, task_names
from services.common.tenancy import DEFAULT_TENANT
from services.providers.sandbox import media
from services.router.pipelines.builtin import BUILTINS
from tests.cli.test_cli import ROOT, TERMINAL_80, plain, run_cli, start_cli
from tests.infra import eventually
from tests.mesh import Mesh, start_process, stop_process

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

# Every task and built-in pipeline, with the input file it reads, if any.
JOBS = {
    "--task=text-to-text": None,
    "--task=text-to-image": None,
    "--task=image-to-image": "photo.png",
    "--task=text-to-speech": None,
    "--task=speech-to-text": "hello.wav",
    "--task=image-to-text": "photo.png",
    "--task=image-to-video": "photo.png",
    "--pipeline=speech-to-image": "hello.wav",
    "--pipeline=image-to-product-copy": "photo.png",
    "--pipeline=text-to-video": None,
}


def write_input(path: Path, variant: str) -> str:
    """An input file of the kind its name says, its bytes unique to `variant` (so a blob
    holding them was uploaded from it); their sha256, which names that blob in storage."""
    if path.suffix == ".png":
        buffer = io.BytesIO()
        text = PngInfo()
        text.add_text("variant", variant)
        Image.new("RGB", (32, 32), "red").save(buffer, format="PNG", pnginfo=text)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(media.text_to_speech(f"hello {variant}", 60))
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def router_refuses_a_blank_prompt(mesh: Mesh, flag: str, file: str | None) -> bool:
    """Whether the router refuses the job with a blank prompt, as its prompt is empty."""
    kind, name = flag.removeprefix("--").split("=")
    spec = job_pb2.JobSpec(prompt="  ", idempotency_key=f"blank-{kind}-{name}")
    if kind == "task":
        spec.task = task_from_name(name)
    else:
        spec.pipeline.name = name
    if file:
        media_type = "image/png" if file.endswith(".png") else "audio/wav"
        data = (mesh.data_dir / file).read_bytes()
        asset = await mesh.assets.upload(data, tenant=DEFAULT_TENANT, media_type=media_type)
        spec.input_asset_ids.append(asset.id)
    try:
        await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "prompt is empty" in (error.details() or ""), error
        return True
    return False


async def submitted_jobs(mesh: Mesh) -> set[str]:
    """The jobs submitted for the (default) tenant the CLI submits as; not pipeline steps,
    which their pipeline submits as it runs."""
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=500))
    assert not listed.next_page_token
    return {job.id for job in listed.jobs if not job.parent_job_id}


async def test_a_blank_prompt_is_a_usage_error_exactly_where_the_router_refuses_it(
    mesh: Mesh, tmp_path: Path
) -> None:
    assert set(JOBS) == {f"--task={t}" for t in task_names()} | {
        f"--pipeline={p}" for p in BUILTINS
    }
    refused = set()
    for i, (flag, name) in enumerate(JOBS.items()):
        file = f"{i}-{name}" if name else None
        sha256 = write_input(mesh.data_dir / file, flag) if file else ""
        inputs = ["--input", str(mesh.data_dir / file)] if file else []
        before = await submitted_jobs(mesh)
        code, out, err = await run_cli(
            "generate", flag, "  ", *inputs,
            "--router", mesh.env["GENMESH_ROUTER_ADDR"],
            "--storage", mesh.env["GENMESH_STORAGE_ADDR"],
            "--out", str(tmp_path / "out"),
            cwd=tmp_path,
        )  # fmt: skip
        submitted = await submitted_jobs(mesh) - before
        uploaded = bool(sha256) and any((mesh.data_dir / "blobs").rglob(sha256))
        # Only now: asking the router uploads the same file.
        if await router_refuses_a_blank_prompt(mesh, flag, file):
            refused.add(flag)
            # Like argparse's own usage errors: one line, exit 2, nothing sent or uploaded.
            assert code == 2, f"{flag}: {out}\n{err}"
            assert err.count("\n") == 1 and "needs a prompt" in err, err
            # (A blank prompt the router refused makes no job, but the CLI would then have
            # said the router's error.)
            assert not submitted, f"{flag}: {submitted}"
            assert not uploaded, f"{flag}: {file} is in storage"
        else:
            # Where the prompt is optional guidance, the job runs.
            assert code == 0, f"{flag}: {out}\n{err}"
            # Seen here, so the checks above would see a job or an upload.
            assert len(submitted) == 1 and (uploaded or not file), (flag, submitted)
    assert refused == {
        "--task=text-to-text",
        "--task=text-to-image",
        "--task=text-to-speech",
        "--task=image-to-video",
        "--pipeline=text-to-video",
    }


def documented_json_lines() -> set[tuple[str, ...]]:
    """The keys of each kind of line the README says `generate --json` prints, in order."""
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\{.*\})` \|", readme, flags=re.MULTILINE)
    return {tuple(re.findall(r'"(\w+)":', row)) for row in rows}


async def test_json_lines_are_the_kinds_the_readme_and_help_document(
    mesh: Mesh, tmp_path: Path
) -> None:
    documented = documented_json_lines()
    assert len(documented) == 3, documented
    code, out, err = await run_cli(
        "generate", "-t", "text-to-image", "a fox", "-p", "width=32", "-p", "height=32",
        "--router", mesh.env["GENMESH_ROUTER_ADDR"],
        "--storage", mesh.env["GENMESH_STORAGE_ADDR"],
        "--out", str(tmp_path / "out"), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    lines = [json.loads(line) for line in out.splitlines()]
    assert {tuple(line) for line in lines} == documented
    [saved] = [line for line in lines if "path" in line]
    assert saved["path"].startswith(str(tmp_path / "out")), saved
    assert isinstance(saved["size_bytes"], int), saved

    code, out, _ = await run_cli("generate", "--help", cwd=tmp_path)
    assert code == 0
    for key in {key for keys in documented for key in keys}:
        assert f'"{key}"' in out, key


async def collect(stream: asyncio.StreamReader | None, into: bytearray) -> None:
    assert stream is not None
    while chunk := await stream.read(4096):
        into += chunk


LOST = "lost the router (UNAVAILABLE); re-attaching until it is back"
BACK = "router back; re-attached"


@pytest.mark.timeout(180)
async def test_a_router_killed_while_watching_is_told_once_lost_and_once_back(
    router_process_mesh: Mesh, tmp_path: Path
) -> None:
    mesh = router_process_mesh
    # Runs until cancelled below, with no event after it starts.
    params = {"latency_ms": 300_000, "steps": 1, "width": 32, "height": 32}
    spec = job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="a fox", parameters=dict_to_struct(params)
    )
    job = (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))).job
    address = mesh.env["GENMESH_ROUTER_ADDR"]
    watch = ["generate", "--watch", job.id, "--router", address, "--no-download"]
    # JSON lines, and the live panel as an 80-column terminal shows it.
    clis = [
        await start_cli(*watch, "--json", cwd=tmp_path),
        await start_cli(*watch, cwd=tmp_path, extra_env=TERMINAL_80),
    ]
    (json_out, json_err), (live_out, live_err) = outputs = [
        (bytearray(), bytearray()) for _ in clis
    ]
    readers = [
        asyncio.create_task(collect(stream, into))
        for cli, (out, err) in zip(clis, outputs, strict=True)
        for stream, into in ((cli.stdout, out), (cli.stderr, err))
    ]

    def said(text: str, output: bytearray) -> bool:
        return text in "\n".join(plain(output.decode()))

    try:
        await eventually(
            lambda: said("JOB_STATE_PROCESSING", json_out) and said("processing", live_out),
            within=30,
        )
        assert mesh.router_proc is not None
        await stop_process(mesh.router_proc, signal.SIGKILL)
        await eventually(lambda: said(LOST, json_err) and said(LOST, live_out), within=30)
        # Several retries go by meanwhile; each used to say 'stream broke' again.
        await asyncio.sleep(4)
        mesh.router_proc = start_process("services.router", {**mesh.env, "GENMESH_LISTEN": address})
        await eventually(lambda: said(BACK, json_err) and said(BACK, live_out), within=60)
        await mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id))
        codes = [await asyncio.wait_for(cli.wait(), 30) for cli in clis]
        await asyncio.gather(*readers)
    finally:
        for cli in clis:
            if cli.returncode is None:
                cli.kill()
                await cli.wait()
    assert codes == [2, 2], outputs
    cancelled = f"job {job.id} was cancelled: "
    notes = json_err.decode().splitlines()
    assert notes[:2] == [f"genmesh: {LOST}", f"genmesh: {BACK}"], notes
    assert len(notes) == 3 and notes[2].startswith(cancelled), notes
    # The job again after the re-attach, as the README says; each event once.
    lines = [json.loads(line) for line in json_out.decode().splitlines()]
    assert [next(iter(line)) for line in lines].count("job") == 2, lines
    sequences = [int(line["event"]["sequence"]) for line in lines if "event" in line]
    assert sequences == sorted(set(sequences)), sequences
    # The live panel says it in place; stderr has only how the job ended.
    assert plain(live_err.decode())[0].startswith(cancelled), live_err
    assert len(plain(live_err.decode())) == 1, live_err
