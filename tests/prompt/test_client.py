"""The router's PromptPreparer: no call for short prompts, the service for long ones, the same
rules in-process when the service is down, and provider prompt limits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from genmesh.v1 import job_pb2, prompt_service_pb2_grpc, provider_service_pb2
from services.common.errors import InvalidArgument
from services.common.parameters import dict_to_struct
from services.prompt import heuristic
from services.prompt.app import running_prompt
from services.prompt.client import PromptPreparer, aspect, check_provider_limit
from services.prompt.settings import Settings
from tests.infra import free_port
from tests.prompt.long_prompts import long_image_prompt

IMAGE = job_pb2.TASK_TEXT_TO_IMAGE


@pytest.fixture
async def preparer() -> AsyncIterator[PromptPreparer]:
    settings = Settings.from_env({"GENMESH_LISTEN": "127.0.0.1:0", "GENMESH_SHUTDOWN_GRACE": "1"})
    async with (
        running_prompt(settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        yield PromptPreparer(prompt_service_pb2_grpc.PromptServiceStub(channel), 10_000)


@pytest.fixture
async def orphan() -> AsyncIterator[PromptPreparer]:
    """A preparer whose PromptService is not running."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        yield PromptPreparer(prompt_service_pb2_grpc.PromptServiceStub(channel), 10_000)


async def test_short_prompt_is_left_as_it_is(orphan: PromptPreparer) -> None:
    # No service is running, so any call would show up as a fallback reason.
    prepared = await orphan.prepare(job_pb2.JobSpec(task=IMAGE, prompt="a fox"))
    assert (prepared.prompt, prepared.optimization, prepared.enhancement) == ("a fox", None, None)


async def test_long_prompt_is_optimized_by_the_service(preparer: PromptPreparer) -> None:
    prompt = long_image_prompt(3000)
    prepared = await preparer.prepare(job_pb2.JobSpec(task=IMAGE, prompt=prompt))
    assert prepared.optimization is not None
    assert prepared.optimization.method == "heuristic"
    assert prepared.optimization.fallback_reason == "no optimizer model configured"
    assert prepared.prompt == heuristic.compress(prompt, 3000)
    job = job_pb2.Job()
    job.spec.prompt = prompt
    prepared.apply(job)
    assert job.spec.prompt == prepared.prompt
    assert job.prompt_optimization.original_prompt == prompt
    assert not job.HasField("prompt_enhancement")


async def test_service_down_compresses_in_process(orphan: PromptPreparer) -> None:
    prompt = long_image_prompt(5000)
    spec = job_pb2.JobSpec(task=IMAGE, prompt=prompt, enhance_prompt=True)
    spec.parameters.CopyFrom(dict_to_struct({"aspect_ratio": "9:16"}))
    prepared = await orphan.prepare(spec)
    assert prepared.optimization is not None and prepared.enhancement is not None
    assert prepared.optimization.method == "heuristic"
    assert prepared.optimization.fallback_reason == "prompt service unavailable (UNAVAILABLE)"
    assert prepared.optimization.optimized_prompt == heuristic.compress(prompt, 3000)
    # Enhancement runs on the optimized prompt.
    assert prepared.enhancement.original_prompt == prepared.optimization.optimized_prompt
    assert prepared.enhancement.hints[0] == "tall portrait framing"
    assert prepared.prompt == prepared.enhancement.enhanced_prompt


async def test_enhancement_only_for_image_and_video(preparer: PromptPreparer) -> None:
    spec = job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_SPEECH, prompt="hi", enhance_prompt=True)
    with pytest.raises(InvalidArgument, match="not text-to-speech"):
        await preparer.prepare(spec)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"width": 1024, "height": 576}, (1024, 576)),
        ({"aspect_ratio": "16:9"}, (1600, 900)),
        ({"aspect_ratio": "2.39:1"}, (239, 100)),
        ({"size": "1024x1792"}, (102400, 179200)),
        ({"aspect_ratio": "wide"}, (0, 0)),
        ({}, (0, 0)),
    ],
)
def test_aspect_from_parameters(parameters: dict[str, object], expected: tuple[int, int]) -> None:
    assert aspect(parameters) == expected


def test_provider_limit() -> None:
    provider = provider_service_pb2.Provider(name="tiny", max_prompt_length=10)
    check_provider_limit(provider, "x" * 10)
    check_provider_limit(provider_service_pb2.Provider(name="any"), "x" * 10_000)
    with pytest.raises(InvalidArgument) as info:
        check_provider_limit(provider, "x" * 11)
    assert info.value.message == "prompt is 11 characters; provider 'tiny' accepts at most 10"
