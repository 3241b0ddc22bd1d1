"""Preview-first drafts through the whole mesh: a smaller draft shown as PREVIEW_READY before
the full-size result, from the generic rule or the instance's catalog `draft` table, and a
failed draft that does not hold the job up."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from PIL import Image

from genmesh.v1 import job_pb2
from services.common.parameters import dict_to_struct
from tests.conftest import Database
from tests.e2e.test_job_flow import submit
from tests.mesh import Mesh, running_mesh

PREVIEW, COMPLETED = job_pb2.JOB_STATE_PREVIEW_READY, job_pb2.JOB_STATE_COMPLETED
DRAFT_NOTE = "draft preview; the full-quality result follows"


def draft_first(provider: str) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        task=job_pb2.TASK_TEXT_TO_IMAGE,
        prompt="a lighthouse at dusk",
        provider=provider,
        draft_first=True,
        parameters=dict_to_struct({"width": 256, "height": 192, "latency_ms": 200, "steps": 2}),
    )


async def png_size(mesh: Mesh, asset_id: str) -> tuple[int, int]:
    image = Image.open(io.BytesIO(await mesh.assets.download(asset_id, tenant="default")))
    assert image.format == "PNG"
    image.load()  # a truncated or corrupt file fails here
    return image.size


async def test_draft_preview_comes_before_the_full_result(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    catalog = """
[[providers]]
name = "sandbox"
family = "sandbox"

[[providers]]
name = "tiny-draft"
family = "sandbox"
draft = { width = 32, height = 24 }

[[providers]]
name = "broken-draft"
family = "sandbox"
draft = { fail_rate = 1.0, fail_kind = "fatal" }
"""
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        catalog=catalog,
        providers=("sandbox", "tiny-draft", "broken-draft"),
    ) as mesh:
        jobs = [
            await submit(mesh, draft_first(name))
            for name in ("sandbox", "tiny-draft", "broken-draft")
        ]
        generic, tiny, broken = await asyncio.wait_for(
            asyncio.gather(*(mesh.watch(j.id) for j in jobs)), 60
        )
        sizes = {}
        for name, events in (("sandbox", generic), ("tiny-draft", tiny)):
            drafts = [e for e in events if e.state == PREVIEW and e.progress.message == DRAFT_NOTE]
            assert len(drafts) == 1, name
            # The draft is the first preview, well before the result.
            first_preview = next(e for e in events if e.state == PREVIEW)
            assert first_preview is drafts[0]
            assert events[-1].state == COMPLETED
            assert events.index(drafts[0]) < len(events) - 1
            sizes[name] = (
                await png_size(mesh, drafts[0].preview.id),
                await png_size(mesh, events[-1].assets[0].id),
            )
        broken_full = await png_size(mesh, broken[-1].assets[0].id)

    # Generic rule: a quarter of each side. Catalog table: exactly what it says.
    assert sizes["sandbox"] == ((64, 48), (256, 192))
    assert sizes["tiny-draft"] == ((32, 24), (256, 192))
    # A failed draft is noted and the full job goes ahead.
    notes = [e.progress.message for e in broken]
    assert any(
        n.startswith("draft failed (sandbox injected a failure of kind fatal") for n in notes
    )
    assert DRAFT_NOTE not in notes
    assert broken[-1].state == COMPLETED and broken_full == (256, 192)
