"""Prompt optimization, per-provider prompt limits and enhancement through the whole mesh:
a fake Ollama (or none) behind PromptService, two sandbox instances, real NATS and database.
The sandbox's text-to-text reply states the length of the prompt it received."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from genmesh.v1 import generate_service_pb2, job_pb2, provider_service_pb2
from tests.conftest import Database
from tests.e2e.test_job_flow import submit
from tests.fakes.ollama import FakeOllama
from tests.infra import free_port
from tests.mesh import Mesh, running_mesh
from tests.prompt.conftest import MODEL
from tests.prompt.long_prompts import KEPT_TERMS, long_image_prompt

SHORT = "sandbox-short"
SHORT_LIMIT = 500
TEXT = job_pb2.TASK_TEXT_TO_TEXT
IMAGE = job_pb2.TASK_TEXT_TO_IMAGE


@asynccontextmanager
async def prompt_mesh(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path, optimizer_url: str
) -> AsyncIterator[Mesh]:
    """Two sandbox instances, one with a prompt limit; PromptService asks `optimizer_url`."""
    catalog = (
        '[[providers]]\nname = "sandbox"\nfamily = "sandbox"\n\n'
        f'[[providers]]\nname = "{SHORT}"\nfamily = "sandbox"\n'
        f"options = {{ max_prompt_length = {SHORT_LIMIT} }}\n"
    )
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        catalog=catalog,
        providers=("sandbox", SHORT),
        # The shared environment reaches PromptService as well as the router.
        router_overrides={
            "GENMESH_PROMPT_OPTIMIZER_URL": optimizer_url,
            "GENMESH_PROMPT_OPTIMIZER_MODEL": MODEL,
        },
    ) as mesh:
        yield mesh


@pytest.fixture
async def mesh(
    nats_url: str,
    nats_prefix: str,
    database: Database,
    tmp_path: Path,
    ollama: tuple[FakeOllama, str],
) -> AsyncIterator[Mesh]:
    async with prompt_mesh(nats_url, nats_prefix, database, tmp_path, ollama[1]) as mesh:
        yield mesh


async def run(mesh: Mesh, spec: job_pb2.JobSpec) -> job_pb2.Job:
    """Submit, wait for the end, and return the job as GetJob shows it."""
    job, events = await mesh.finished((await submit(mesh, spec)).id)
    assert events[-1].state == job_pb2.JOB_STATE_COMPLETED, events[-1]
    return job


def received_length(job: job_pb2.Job) -> int:
    """How many characters the sandbox says its prompt had."""
    match = re.search(r"and ([\d,]+) characters\.", job.output_text)
    assert match, job.output_text
    return int(match[1].replace(",", ""))


async def test_long_prompt_is_compressed_by_the_model_and_the_worker_receives_it(
    mesh: Mesh, ollama: tuple[FakeOllama, str]
) -> None:
    fake, _ = ollama
    prompt = long_image_prompt(6000)
    job = await run(mesh, job_pb2.JobSpec(task=TEXT, prompt=prompt, provider="sandbox"))
    record = job.prompt_optimization
    assert record.method == f"provider:ollama/{MODEL}"
    assert record.fallback_reason == ""
    assert (record.original_length, record.original_prompt) == (len(prompt), prompt)
    assert record.optimized_length == len(record.optimized_prompt) < 3000
    assert record.duration_ms >= 50  # the fake model's load delay
    assert all(term in record.optimized_prompt for term in KEPT_TERMS)
    # The provider saw the optimized prompt, and the stored spec says so.
    assert job.spec.prompt == record.optimized_prompt
    assert received_length(job) == record.optimized_length
    assert [r.path for r in fake.faults.requests] == ["/api/chat"]


async def test_a_short_prompt_costs_no_optimization(
    mesh: Mesh, ollama: tuple[FakeOllama, str]
) -> None:
    prompt = long_image_prompt(2000)[:2999]
    job = await run(mesh, job_pb2.JobSpec(task=TEXT, prompt=prompt, provider="sandbox"))
    assert not job.HasField("prompt_optimization")
    assert job.spec.prompt == prompt
    assert received_length(job) == len(prompt)
    assert ollama[0].faults.requests == []


async def test_without_a_reachable_model_the_heuristic_compresses(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    async with prompt_mesh(nats_url, nats_prefix, database, tmp_path, down) as mesh:
        prompt = long_image_prompt(9000)
        job = await run(mesh, job_pb2.JobSpec(task=TEXT, prompt=prompt, provider="sandbox"))
        record = job.prompt_optimization
        assert record.method == "heuristic"
        assert f"cannot reach ollama/{MODEL}" in record.fallback_reason
        assert record.original_length == len(prompt)
        assert record.optimized_length < 3000
        assert record.duration_ms >= 0
        assert all(term in record.optimized_prompt for term in KEPT_TERMS)
        assert received_length(job) == record.optimized_length


async def test_a_provider_prompt_limit_is_enforced_before_dispatch(mesh: Mesh) -> None:
    reply = await mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
    limits = {p.name: p.max_prompt_length for p in reply.providers}
    assert limits == {"sandbox": 0, SHORT: SHORT_LIMIT}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.generate.Submit(
            generate_service_pb2.SubmitRequest(
                spec=job_pb2.JobSpec(task=TEXT, prompt="x" * (SHORT_LIMIT + 1), provider=SHORT)
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"prompt is 501 characters; provider '{SHORT}' accepts at most {SHORT_LIMIT}"
    )
    job = await run(mesh, job_pb2.JobSpec(task=TEXT, prompt="x" * SHORT_LIMIT, provider=SHORT))
    assert received_length(job) == SHORT_LIMIT


async def test_enhancement_adds_hints_the_provider_receives(mesh: Mesh) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"width": 128, "height": 64, "latency_ms": 0})
    spec = job_pb2.JobSpec(
        task=IMAGE,
        prompt="a red fox in snow",
        provider="sandbox",
        parameters=parameters,
        enhance_prompt=True,
    )
    job = await run(mesh, spec)
    record = job.prompt_enhancement
    assert list(record.hints)[:2] == [
        "wide landscape framing",
        "balanced composition, cohesive color palette",
    ]
    assert "highly detailed" in record.hints
    assert record.original_prompt == "a red fox in snow"
    assert (
        job.spec.prompt
        == record.enhanced_prompt
        == ("a red fox in snow, " + ", ".join(record.hints))
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.generate.Submit(
            generate_service_pb2.SubmitRequest(
                spec=job_pb2.JobSpec(task=TEXT, prompt="hello", enhance_prompt=True)
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "enhance_prompt applies to image and video tasks" in info.value.details()
