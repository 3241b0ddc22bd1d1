"""`genmesh batch FILE` as a user runs it (a subprocess) against a real running mesh."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Mapping
from pathlib import Path

import pytest
from PIL import Image

from genmesh.v1 import job_pb2, job_service_pb2
from tests.cli.test_cli import TERMINAL_80, plain, run_cli, start_cli
from tests.cli.test_generate import BACK, LOST, collect
from tests.infra import eventually
from tests.mesh import Mesh, start_process, stop_process

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


async def batch(
    mesh: Mesh, tmp_path: Path, text: str, *flags: str, extra_env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(text)
    return await run_cli(
        "batch",
        str(prompts),
        "--task",
        "text-to-image",
        "--router",
        mesh.env["GENMESH_ROUTER_ADDR"],
        "--storage",
        mesh.env["GENMESH_STORAGE_ADDR"],
        "--out",
        str(tmp_path / "out"),
        "-p",
        "latency_ms=100",
        "-p",
        "width=32",
        "-p",
        "height=32",
        *flags,
        cwd=tmp_path,
        extra_env=extra_env,
    )


async def test_batch_runs_one_job_per_line_and_saves_the_outputs(
    mesh: Mesh, tmp_path: Path
) -> None:
    lines = ["a red fox", "", "an owl at night", "   ", "a whale", "a heron in reeds", "a moth"]
    code, out, err = await batch(mesh, tmp_path, "\n".join(lines) + "\n")
    assert code == 0, f"{out}\n{err}"

    found = re.search(r"batch (b_[0-9a-f]{32})", out)
    assert found, out
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(batch_id=found.group(1)))
    jobs = {job.id: job for job in listed.jobs}
    prompts = [line.strip() for line in lines if line.strip()]
    assert sorted(job.spec.prompt for job in jobs.values()) == sorted(prompts)
    assert {job.state for job in jobs.values()} == {job_pb2.JOB_STATE_COMPLETED}
    # The progress line ended with every job done; one saved picture per job.
    assert f"{len(prompts)}/{len(prompts)} ended" in out
    pngs = sorted((tmp_path / "out").glob("*/*.png"))
    assert sorted(p.parent.name for p in pngs) == sorted(jobs)
    for png in pngs:
        assert str(png) in out
        with Image.open(png) as image:
            assert image.size == (32, 32)
    assert f"outputs in {(tmp_path / 'out').resolve()}" in out

    # `genmesh jobs --batch` finds them again: what a detached batch points to.
    code, out, err = await run_cli(
        "jobs",
        "--batch",
        found.group(1),
        "--json",
        "--router",
        mesh.env["GENMESH_ROUTER_ADDR"],
        cwd=tmp_path,
    )
    assert code == 0, err
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == sorted(jobs)


async def test_batch_exit_code_and_errors(mesh: Mesh, tmp_path: Path) -> None:
    code, out, err = await batch(
        mesh, tmp_path, "a fox\nan owl\n", "-p", "fail_rate=1", "-p", "fail_kind=fatal"
    )
    assert code == 1, f"{out}\n{err}"
    assert out.count("failed") >= 2
    assert not (tmp_path / "out").exists()
    assert "outputs in" not in out  # there are none

    code, out, err = await batch(mesh, tmp_path, "\n  \n")
    assert code == 2
    assert "has no prompts" in err

    # The bad prompt is named by its line in the file, blank lines counted.
    code, out, err = await batch(mesh, tmp_path, "a fox\n\n" + "x" * 20_000 + "\n")
    assert code == 1
    assert err.startswith("genmesh batch: INVALID_ARGUMENT: line 3: "), err
    assert err.count("\n") == 1


async def test_batch_on_a_narrow_terminal_shows_each_job_id_whole(
    mesh: Mesh, tmp_path: Path
) -> None:
    code, out, err = await batch(mesh, tmp_path, "a fox\nan owl\n", extra_env=TERMINAL_80)
    assert code == 0, f"{out}\n{err}"
    lines = plain(out)
    found = re.search(r"b_[0-9a-f]{32}", "\n".join(lines))
    assert found, lines
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(batch_id=found.group(0)))
    assert len(listed.jobs) == 2
    # Ids are for copying into other commands: a table cut them to 'j_a47af30ecc…'.
    for job in listed.jobs:
        assert f"job     {job.id}" in lines, lines


async def test_batch_live_line_keeps_within_an_80_column_terminal(
    mesh: Mesh, tmp_path: Path
) -> None:
    code, out, err = await batch(
        mesh, tmp_path, "a fox\nan owl\n", "-p", "latency_ms=1000", extra_env=TERMINAL_80
    )
    assert code == 0, f"{out}\n{err}"
    lines = plain(out)
    assert max(len(line) for line in lines) <= 80, lines
    found = re.search(r"batch (b_[0-9a-f]{32})", out)
    assert found, lines
    # Each frame's first line holds the id, bar, count and time; the id used to be squeezed
    # onto a line of its own under 'batch'.
    status = [line for line in lines if line.startswith("batch")]
    assert status, lines
    for line in status:
        assert re.fullmatch(rf"batch {found.group(1)} +\S+ \d/2 ended \d+\.\ds", line), line


@pytest.mark.timeout(180)
async def test_batch_says_the_router_is_back_once_it_re_attaches(
    router_process_mesh: Mesh, tmp_path: Path
) -> None:
    mesh = router_process_mesh
    address = mesh.env["GENMESH_ROUTER_ADDR"]
    (tmp_path / "prompts.txt").write_text("a fox\nan owl\n")
    cli = await start_cli(
        "batch",
        str(tmp_path / "prompts.txt"),
        "--task",
        "text-to-image",
        "--no-download",
        "--router",
        address,
        "--storage",
        mesh.env["GENMESH_STORAGE_ADDR"],
        *("-p", "latency_ms=2000", "-p", "width=32", "-p", "height=32"),
        cwd=tmp_path,
        extra_env=TERMINAL_80,
    )
    out = bytearray()
    reader = asyncio.create_task(collect(cli.stdout, out))
    try:
        await eventually(lambda: "processing 2" in out.decode(), within=30)
        assert mesh.router_proc is not None
        await stop_process(mesh.router_proc, signal.SIGKILL)
        await eventually(lambda: LOST in out.decode(), within=30)
        # The jobs end while the router is away: the re-attached stream brings them as
        # they are now, with no event after them.
        await asyncio.sleep(4)
        mesh.router_proc = start_process("services.router", {**mesh.env, "GENMESH_LISTEN": address})
        code = await asyncio.wait_for(cli.wait(), 60)
        await reader
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
    lines = plain(out.decode())
    assert code == 0, lines
    # The panel left on the screen is the last one drawn: it said the stream broke, long
    # after the router was back and every job had completed.
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("batch ")) :]
    assert "completed 2" in final, final
    assert BACK in final and not any("re-attaching" in line for line in final), final
