"""`genmesh jobs` as a user runs it (a subprocess) against a real running mesh."""

from __future__ import annotations

from pathlib import Path

import pytest

from genmesh.v1 import generate_service_pb2, job_pb2
from services.common.parameters import dict_to_struct
from tests.cli.test_cli import TERMINAL_80, plain, run_cli
from tests.mesh import Mesh

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


async def test_jobs_on_an_80_column_terminal_take_two_lines_each_with_ids_whole(
    mesh: Mesh, tmp_path: Path
) -> None:
    prompts = ["a fox", "an owl", "a heron standing in the reeds at dawn, " * 3]
    specs = [
        job_pb2.JobSpec(
            task=job_pb2.TASK_TEXT_TO_IMAGE,
            prompt=prompt,
            parameters=dict_to_struct({"width": 32, "height": 32}),
        )
        for prompt in prompts
    ]
    reply = await mesh.generate.SubmitBatch(generate_service_pb2.SubmitBatchRequest(specs=specs))
    code, out, err = await run_cli(
        "jobs", "--router", mesh.env["GENMESH_ROUTER_ADDR"], cwd=tmp_path, extra_env=TERMINAL_80
    )
    assert code == 0, err
    lines = plain(out)
    assert max(len(line) for line in lines) <= 80, lines
    # The header and each job on two lines (there were seven a job, one per field).
    assert len(lines) == 2 * (1 + len(prompts)), lines
    assert lines[0].split() == ["job", "task", "state", "provider"], lines
    assert lines[1].split() == ["created", "prompt"], lines
    for job in reply.jobs:
        # Ids are for copying into other commands: whole, at the start of their line.
        [first] = [n for n, line in enumerate(lines) if job.id in line]
        assert lines[first].startswith(f"{job.id}  text-to-image  "), lines
        assert lines[first + 1].startswith("  20"), lines
    # The long prompt is cut short on its line rather than taking more.
    assert any(line.endswith("…") for line in lines), lines


async def test_pipelines_stand_for_their_steps_unless_steps_are_asked_for(
    mesh: Mesh, tmp_path: Path
) -> None:
    spec = job_pb2.JobSpec(
        prompt="a fox in snow",
        pipeline=job_pb2.PipelineSpec(name="text-to-video"),
    )
    pipeline = (await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))).job
    events = await mesh.watch(pipeline.id)
    assert events[-1].state == job_pb2.JOB_STATE_COMPLETED
    router = mesh.env["GENMESH_ROUTER_ADDR"]

    async def listed(*extra: str) -> list[str]:
        code, out, err = await run_cli("jobs", "--router", router, *extra, cwd=tmp_path)
        assert code == 0, err
        return plain(out)

    lines = await listed()
    assert [line.split()[:4] for line in lines[1:]] == [
        [pipeline.id, "pipeline", "text-to-video", "completed"]
    ], lines
    steps = [line.split()[1] for line in (await listed("--steps"))[1:]]
    assert sorted(steps) == ["image-to-video", "pipeline", "text-to-image"], steps
    # Filtered by task, a step is listed: its pipeline has no task to match.
    assert len(await listed("--task", "text-to-image")) == 2
