"""Prompt optimization and enhancement: the heuristic, the Ollama path against a fake Ollama
on loopback and its fallbacks, and both RPCs over real gRPC."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from genmesh.v1 import job_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from services.prompt import heuristic
from services.prompt.app import running_prompt
from services.prompt.enhance import enhance
from services.prompt.ollama import OllamaCompressor
from services.prompt.optimize import HEURISTIC, UNCHANGED, Optimizer
from services.prompt.settings import Settings
from services.prompt.terms import has_term
from tests.fakes.ollama import FakeOllama
from tests.fakes.server import Injected
from tests.infra import free_port
from tests.prompt.conftest import MODEL, first_sentence
from tests.prompt.long_prompts import ENDING, KEPT_TERMS, MIDDLE, OPENING, long_image_prompt

IMAGE = job_pb2.TASK_TEXT_TO_IMAGE


def assert_keeps(text: str, terms: tuple[str, ...] = KEPT_TERMS) -> None:
    lost = [t for t in terms if not has_term(text, t)]
    assert not lost, f"lost {lost} in {text!r}"


# --- the heuristic ----------------------------------------------------------------------------


def test_heuristic_gets_a_9000_character_prompt_below_3000_keeping_its_terms() -> None:
    prompt = long_image_prompt(9000)
    assert 9000 <= len(prompt) <= 10_000
    out = heuristic.compress(prompt, 3000)
    assert len(out) < 3000
    assert_keeps(out)
    assert out.count("The fox is red") == 1
    assert "basically" not in out and "make sure" not in out
    # Deterministic: the same prompt compresses the same way.
    assert heuristic.compress(prompt, 3000) == out


def test_heuristic_keeps_buried_terms_when_every_clause_is_new() -> None:
    # Nothing repeats, so it must choose clauses, not merely drop repeats.
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    sentences = [OPENING]
    while sum(len(s) for s in sentences) < 8800:
        words = ["".join(rng.choices(letters, k=rng.randint(4, 9))) for _ in range(12)]
        sentences.append(" ".join(words).capitalize() + ".")
        if len(sentences) == 40:
            sentences.append(MIDDLE)
    prompt = " ".join([*sentences, ENDING])
    out = heuristic.compress(prompt, 3000)
    assert len(out) < 3000
    assert out.startswith("create a watercolor painting of a red fox")
    assert_keeps(out)


def test_heuristic_leaves_a_short_prompt_alone() -> None:
    assert heuristic.compress("a red fox, watercolor", 3000) == "a red fox, watercolor"


def test_heuristic_cuts_one_endless_clause_at_a_word_boundary() -> None:
    prompt = " ".join(f"word{i}" for i in range(2000))
    out = heuristic.compress(prompt, 3000)
    assert 1000 < len(out) < 3000
    assert prompt.startswith(out.rstrip("."))


def test_heuristic_never_returns_more_than_the_budget_even_for_terms_alone() -> None:
    prompt = "watercolor, 8k, highly detailed, golden hour. " * 10 + "x" * 500
    out = heuristic.compress(prompt, 120)
    assert len(out) < 120
    assert_keeps(out, ("watercolor", "8k", "highly detailed", "golden hour"))


def test_filler_is_stripped() -> None:
    assert heuristic.strip_filler("Please could you make sure that it is really red") == (
        "it is red"
    )


# --- enhancement -------------------------------------------------------------------------------


def test_enhance_adds_framing_style_lighting_and_quality() -> None:
    record = enhance("a red fox in snow", IMAGE, 1024, 576)
    assert list(record.hints) == [
        "wide landscape framing",
        "balanced composition, cohesive color palette",
        "soft natural lighting",
        "highly detailed",
        "sharp focus",
        "high resolution",
    ]
    assert record.original_prompt == "a red fox in snow"
    assert record.enhanced_prompt == "a red fox in snow, " + ", ".join(record.hints)


@pytest.mark.parametrize(
    ("width", "height", "framing"),
    [(576, 1024, "tall portrait framing"), (9, 9, "square framing"), (0, 0, None)],
)
def test_enhance_framing_follows_the_aspect(width: int, height: int, framing: str | None) -> None:
    hints = list(enhance("a fox", IMAGE, width, height).hints)
    if framing is None:
        assert not any("framing" in h for h in hints)
    else:
        assert hints[0] == framing


def test_enhance_adds_nothing_the_prompt_already_says() -> None:
    prompt = "A watercolor fox at golden hour, intricate, sharp focus, 8k."
    record = enhance(prompt, IMAGE)
    assert list(record.hints) == []
    assert record.enhanced_prompt == prompt


def test_enhance_video_asks_for_motion_and_respects_the_limit() -> None:
    assert "smooth natural motion" in enhance("a fox", job_pb2.TASK_IMAGE_TO_VIDEO).hints
    assert (
        "smooth natural motion"
        not in enhance("slow camera pan over a fox", job_pb2.TASK_IMAGE_TO_VIDEO).hints
    )
    record = enhance("x" * 60, IMAGE, max_length=100)
    assert len(record.enhanced_prompt) <= 100
    assert list(record.hints) == ["soft natural lighting", "highly detailed"]


def test_enhance_an_empty_prompt_is_just_the_hints() -> None:
    record = enhance("", job_pb2.TASK_IMAGE_TO_IMAGE)
    assert record.enhanced_prompt == ", ".join(record.hints)


# --- the Ollama path and its fallbacks ----------------------------------------------------------


async def optimize_with(
    url: str, prompt: str, model: str = MODEL, wait: float = 5.0
) -> job_pb2.PromptOptimization:
    async with httpx.AsyncClient(timeout=wait) as client:
        optimizer = Optimizer(OllamaCompressor(url, model, client))
        return await optimizer.optimize(prompt, 3000, IMAGE)


async def test_ollama_compresses_and_the_record_says_so(ollama: tuple[FakeOllama, str]) -> None:
    fake, url = ollama
    prompt = long_image_prompt(6000)
    record = await optimize_with(url, prompt)
    assert record.method == f"provider:ollama/{MODEL}"
    assert record.fallback_reason == ""
    assert (record.original_length, record.original_prompt) == (len(prompt), prompt)
    assert record.optimized_length == len(record.optimized_prompt) < 3000
    # The model's sentence, with the terms it dropped put back.
    assert record.optimized_prompt.startswith(first_sentence(prompt).rstrip("."))
    assert_keeps(record.optimized_prompt)
    assert record.duration_ms >= 50
    [request] = fake.faults.requests
    assert request.path == "/api/chat"
    body = json.loads(request.body)
    assert body["model"] == MODEL and body["stream"] is False
    assert body["options"]["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "shorter than 3000 characters" in body["messages"][0]["content"]
    assert body["messages"][1]["content"].endswith(prompt)


async def test_ollama_down_falls_back_to_the_heuristic() -> None:
    prompt = long_image_prompt(9000)
    record = await optimize_with(f"http://127.0.0.1:{free_port()}", prompt)
    assert record.method == HEURISTIC
    assert "cannot reach ollama/llama3.2" in record.fallback_reason
    assert record.optimized_prompt == heuristic.compress(prompt, 3000)
    assert record.optimized_length < 3000


async def test_unknown_model_falls_back_with_ollamas_reason(
    ollama: tuple[FakeOllama, str],
) -> None:
    _, url = ollama
    record = await optimize_with(url, long_image_prompt(4000), model="nope")
    assert record.method == HEURISTIC
    assert "HTTP 404" in record.fallback_reason and "not found" in record.fallback_reason


async def test_server_error_falls_back(ollama: tuple[FakeOllama, str]) -> None:
    fake, url = ollama
    fake.faults.inject(Injected(503, {"error": "server busy"}))
    record = await optimize_with(url, long_image_prompt(4000))
    assert record.method == HEURISTIC
    assert "HTTP 503: server busy" in record.fallback_reason


async def test_too_long_or_empty_answers_fall_back(ollama: tuple[FakeOllama, str]) -> None:
    fake, url = ollama
    fake.reply = lambda prompt: prompt  # no shorter at all
    record = await optimize_with(url, long_image_prompt(4000))
    assert record.method == HEURISTIC
    assert "not fewer than 3,000" in record.fallback_reason
    fake.reply = lambda prompt: "  "
    record = await optimize_with(url, long_image_prompt(4000))
    assert record.method == HEURISTIC
    assert record.fallback_reason == f"ollama/{MODEL} answered nothing"


async def test_slow_model_falls_back_after_the_timeout(ollama: tuple[FakeOllama, str]) -> None:
    fake, url = ollama
    fake.load_delay = 0.6
    record = await optimize_with(url, long_image_prompt(4000), wait=0.2)
    assert record.method == HEURISTIC
    assert record.fallback_reason == f"ollama/{MODEL} did not answer in time"
    assert 200 <= record.duration_ms < 600


async def test_chatty_wrapping_is_removed(ollama: tuple[FakeOllama, str]) -> None:
    fake, url = ollama
    fake.reply = lambda prompt: 'Here is the shorter prompt:\n"' + first_sentence(prompt) + '"'
    record = await optimize_with(url, long_image_prompt(4000))
    assert record.optimized_prompt.startswith("Please could you create a watercolor")


async def test_a_prompt_already_short_enough_is_unchanged() -> None:
    record = await Optimizer().optimize("a fox", 3000)
    assert (record.method, record.optimized_prompt, record.optimized_length) == (
        UNCHANGED,
        "a fox",
        5,
    )


# --- over gRPC ----------------------------------------------------------------------------------


@pytest.fixture
async def stub(
    ollama: tuple[FakeOllama, str],
) -> AsyncIterator[prompt_service_pb2_grpc.PromptServiceStub]:
    settings = Settings.from_env(
        {
            "GENMESH_LISTEN": "127.0.0.1:0",
            "GENMESH_SHUTDOWN_GRACE": "1",
            "GENMESH_PROMPT_OPTIMIZER_URL": ollama[1],
            "GENMESH_PROMPT_OPTIMIZER_MODEL": MODEL,
        }
    )
    async with (
        running_prompt(settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        yield prompt_service_pb2_grpc.PromptServiceStub(channel)


async def test_optimize_rpc_uses_the_configured_model(
    stub: prompt_service_pb2_grpc.PromptServiceStub,
) -> None:
    prompt = long_image_prompt(5000)
    reply = await stub.OptimizePrompt(
        prompt_service_pb2.OptimizePromptRequest(prompt=prompt, task=IMAGE)
    )
    record = reply.optimization
    assert record.method == f"provider:ollama/{MODEL}"
    assert record.original_length == len(prompt)
    assert record.optimized_length < 3000


async def test_optimize_rpc_honours_below_length(
    stub: prompt_service_pb2_grpc.PromptServiceStub,
) -> None:
    reply = await stub.OptimizePrompt(
        prompt_service_pb2.OptimizePromptRequest(prompt=long_image_prompt(3000), below_length=200)
    )
    # The fake's one sentence (~120 characters) plus the terms it dropped no longer fit.
    assert reply.optimization.method == HEURISTIC
    assert reply.optimization.optimized_length < 200


@pytest.mark.parametrize(
    ("prompt", "below", "message"),
    [
        ("   ", 0, "prompt is empty"),
        ("x" * 10_001, 0, "prompt is 10,001 characters; the limit is 10,000"),
        ("a fox", 99, "below_length must be at least 100"),
    ],
)
async def test_optimize_rpc_rejects_bad_requests(
    stub: prompt_service_pb2_grpc.PromptServiceStub, prompt: str, below: int, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.OptimizePrompt(
            prompt_service_pb2.OptimizePromptRequest(prompt=prompt, below_length=below)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


async def test_enhance_rpc(stub: prompt_service_pb2_grpc.PromptServiceStub) -> None:
    reply = await stub.EnhancePrompt(
        prompt_service_pb2.EnhancePromptRequest(prompt="a fox", task=IMAGE, width=1, height=2)
    )
    assert reply.enhancement.hints[0] == "tall portrait framing"
    assert reply.enhancement.enhanced_prompt.startswith("a fox, tall portrait framing, ")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EnhancePrompt(
            prompt_service_pb2.EnhancePromptRequest(
                prompt="a fox", task=job_pb2.TASK_TEXT_TO_SPEECH
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_enhance_rpc_refuses_a_prompt_over_the_limit(
    stub: prompt_service_pb2_grpc.PromptServiceStub,
) -> None:
    # Echoed twice, a 2.5 MB prompt made a reply no client with the default limit could take.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EnhancePrompt(
            prompt_service_pb2.EnhancePromptRequest(prompt="x " * 1_250_000, task=IMAGE)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "prompt is 2,500,000 characters; the limit is 10,000"
    at_limit = await stub.EnhancePrompt(
        prompt_service_pb2.EnhancePromptRequest(prompt="x" * 10_000, task=IMAGE)
    )
    assert at_limit.enhancement.enhanced_prompt == "x" * 10_000
