"""Speech-to-text on silent audio, through the whole mesh with the offline PocketSphinx
provider: the job fails with code "no_speech" rather than completing with nothing in it."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from genmesh.v1 import job_pb2
from tests.conftest import Database
from tests.e2e.test_job_flow import submit
from tests.e2e.test_pipelines import pipeline_spec, step
from tests.mesh import Mesh, running_mesh

CATALOG = """
[[providers]]
name = "sandbox"
family = "sandbox"

[[providers]]
name = "pocketsphinx"
family = "pocketsphinx"
"""
TENANT = "default"


@pytest.fixture
async def mesh(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> AsyncIterator[Mesh]:
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        catalog=CATALOG,
        providers=("sandbox", "pocketsphinx"),
    ) as m:
        yield m


async def upload_silence(mesh: Mesh) -> str:
    """One second of digital silence as a 16 kHz mono 16-bit WAV."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(bytes(32_000))
    asset = await mesh.assets.upload(buffer.getvalue(), tenant=TENANT, media_type="audio/wav")
    return asset.id


async def test_silence_fails_with_no_speech(mesh: Mesh) -> None:
    spec = job_pb2.JobSpec(
        task=job_pb2.TASK_SPEECH_TO_TEXT,
        provider="pocketsphinx",
        input_asset_ids=[await upload_silence(mesh)],
    )
    job, events = await mesh.finished((await submit(mesh, spec)).id)

    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert (job.error.code, job.error.kind) == ("no_speech", job_pb2.ERROR_KIND_INVALID_INPUT)
    assert job.error.provider == "pocketsphinx"
    assert "no speech" in job.error.message
    assert not job.assets and not job.output_text
    # Silence is not the provider's fault: not retried, not sent to another provider.
    assert [a.provider for a in job.attempts] == ["pocketsphinx"]
    assert events[-1].state == job_pb2.JOB_STATE_FAILED
    assert events[-1].error.code == "no_speech"


async def test_a_pipeline_stops_at_the_step_that_heard_nothing(mesh: Mesh) -> None:
    steps = (
        step("transcribe", job_pb2.TASK_SPEECH_TO_TEXT, inputs=("input",), provider="pocketsphinx"),
        step("enhance", job_pb2.TASK_TEXT_TO_TEXT, "{transcribe}", provider="sandbox"),
    )
    spec = pipeline_spec(steps=steps, input_asset_ids=[await upload_silence(mesh)])
    job, _ = await mesh.finished((await submit(mesh, spec)).id)

    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.code == "no_speech"
    assert job.error.message.startswith("step 'transcribe' (speech-to-text) failed: no speech")
    transcribe, enhance = job.pipeline.steps
    assert transcribe.state == job_pb2.JOB_STATE_FAILED
    assert enhance.state == job_pb2.JOB_STATE_CANCELLED and not enhance.job_id
