"""PromptService: the pure core, the servicer over real gRPC, and the process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.v1 import job_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from services.common.tasks import PROMPT_OPTIONAL
from services.prompt import core
from services.prompt.app import running_prompt
from services.prompt.servicer import SERVICE_NAME
from services.prompt.settings import Settings

LIMIT = 10_000
TEXT = job_pb2.TASK_TEXT_TO_IMAGE
Task: TypeAlias = job_pb2.Task.ValueType
REQUIRED_TASKS = [
    t for t in job_pb2.Task.values() if t != job_pb2.TASK_UNSPECIFIED and t not in PROMPT_OPTIONAL
]
OPTIONAL_TASKS = [Task(t) for t in sorted(PROMPT_OPTIONAL)]


def codes(violations: list[core.Violation]) -> list[str]:
    return [v.code for v in violations]


# --- core: validate -------------------------------------------------------------------------


def test_prompt_at_the_limit_is_valid() -> None:
    assert core.validate("x" * LIMIT, TEXT, LIMIT) == []


def test_prompt_over_the_limit_states_limit_and_length() -> None:
    [violation] = core.validate("x" * (LIMIT + 1), TEXT, LIMIT)
    assert violation.code == core.TOO_LONG
    assert violation.message == "prompt is 10,001 characters; the limit is 10,000"


def test_length_counts_code_points_not_bytes() -> None:
    # Each of these is 4 bytes in UTF-8 and 2 UTF-16 units, but one character.
    assert core.validate("\U0001f98a" * 5, TEXT, 5) == []
    assert codes(core.validate("\U0001f98a" * 6, TEXT, 5)) == [core.TOO_LONG]


@pytest.mark.parametrize("task", REQUIRED_TASKS)
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t \r\n"])
def test_blank_prompt_is_empty_where_required(prompt: str, task: Task) -> None:
    assert codes(core.validate(prompt, task, LIMIT)) == [core.EMPTY]


@pytest.mark.parametrize("task", OPTIONAL_TASKS)
def test_blank_prompt_is_fine_where_optional(task: Task) -> None:
    assert core.validate("", task, LIMIT) == []
    assert core.validate("  ", task, LIMIT) == []


def test_optional_prompt_is_still_checked_when_given() -> None:
    task = OPTIONAL_TASKS[0]
    assert codes(core.validate("y" * (LIMIT + 1), task, LIMIT)) == [core.TOO_LONG]
    assert codes(core.validate("a\x00", task, LIMIT)) == [core.CONTROL_CHARACTERS]


@pytest.mark.parametrize("ch", ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f"])
def test_c0_controls_are_flagged(ch: str) -> None:
    [violation] = core.validate(f"a red fox{ch}", TEXT, LIMIT)
    assert violation.code == core.CONTROL_CHARACTERS
    assert f"U+{ord(ch):04X}" in violation.message
    assert "position 9" in violation.message


def test_tab_and_line_breaks_are_not_controls() -> None:
    assert core.validate("a red fox\n\tin snow\r\nat dawn", TEXT, LIMIT) == []


def test_del_and_c1_are_not_c0() -> None:
    assert core.validate("fox\x7f\x85", TEXT, LIMIT) == []


def test_control_characters_are_counted_once() -> None:
    [violation] = core.validate("\x00a\x00b\x1b", TEXT, LIMIT)
    assert violation.message == "prompt contains 3 control characters (first U+0000 at position 0)"


def test_several_violations_at_once() -> None:
    assert codes(core.validate("\x00" * 11, TEXT, 10)) == [core.TOO_LONG, core.CONTROL_CHARACTERS]


# --- core: analyze --------------------------------------------------------------------------


def test_analysis_of_a_simple_sentence() -> None:
    a = core.analyze("The cat sat on the mat.")
    assert (a.length, a.words, a.sentences) == (23, 6, 1)
    # Six one-syllable words: 206.835 - 1.015 * 6 - 84.6 * 1.
    assert a.readability == pytest.approx(116.15, abs=0.01)
    assert a.keywords == ("cat", "sat", "mat")
    assert 0.0 <= a.complexity < 0.2


def test_analysis_of_a_typical_prompt() -> None:
    prompt = (
        "A watercolor painting of a red fox in a snowy forest at dawn. "
        "The fox looks at the camera, its breath visible in the cold air! "
        "Soft light, muted palette."
    )
    a = core.analyze(prompt)
    assert a.length == len(prompt)
    assert a.words == 30
    assert a.sentences == 3
    assert 60 < a.readability < 100
    assert 0.0 < a.complexity < 0.5
    assert a.keywords[0] == "fox"  # the only repeated content word ranks first
    assert len(a.keywords) == core.MAX_KEYWORDS
    assert not set(a.keywords) & core.STOPWORDS


def test_dense_prose_is_harder_and_more_complex_than_plain() -> None:
    plain = core.analyze("The dog runs. The sun is warm. We go home.")
    dense = core.analyze(
        "Notwithstanding considerable methodological heterogeneity, comprehensive "
        "epidemiological investigations consistently demonstrated statistically significant "
        "associations between socioeconomic deprivation and cardiovascular morbidity."
    )
    assert dense.readability < plain.readability
    assert dense.complexity > plain.complexity
    assert 0.0 <= plain.complexity <= 1.0
    assert 0.0 <= dense.complexity <= 1.0


def test_complexity_saturates_at_one() -> None:
    a = core.analyze(" ".join(["incomprehensibility"] * 200))
    assert a.sentences == 1
    assert a.complexity == 1.0


def test_keywords_rank_by_frequency_then_first_appearance() -> None:
    a = core.analyze("Castle, dragon, castle. Knight's sword; dragon castle, the the the a 42 x.")
    assert a.keywords == ("castle", "dragon", "knight", "sword")


def test_keywords_are_capped() -> None:
    words = [f"word{chr(97 + i)}" for i in range(20)]
    assert len(core.analyze(" ".join(words)).keywords) == core.MAX_KEYWORDS


def test_decimal_points_and_line_breaks_as_sentences() -> None:
    assert core.analyze("Render at 3.5 megapixels").sentences == 1
    assert core.analyze("a castle\na dragon\n\na knight").sentences == 3
    # Text without terminal punctuation is still one sentence.
    assert core.analyze("neon city skyline").sentences == 1


def test_empty_analysis_is_all_zero() -> None:
    assert core.analyze("") == core.Analysis(0, 0, 0, 0.0, 0.0, ())
    assert core.analyze(" ... ").words == 0


def test_non_latin_text_counts_words() -> None:
    a = core.analyze("Ein roter Fuchs im Schnee. Лиса в снегу.")
    assert (a.words, a.sentences) == (8, 2)
    assert "fuchs" in a.keywords
    assert core.analyze("雪の中の赤い狐\u3002月が出ている\uff01どこへ行くの\uff1f").sentences == 3
    assert core.analyze("赤い狐\uff61月\uff0e").sentences == 2  # half-width and full-width stops


def test_syllables() -> None:
    assert [core.count_syllables(w) for w in ["the", "make", "table", "fox", "beautiful"]] == [
        1,
        1,
        2,
        1,
        3,
    ]


# --- servicer over a real gRPC server --------------------------------------------------------


@pytest.fixture
async def stub() -> AsyncIterator[prompt_service_pb2_grpc.PromptServiceStub]:
    settings = Settings.from_env({"GENMESH_LISTEN": "127.0.0.1:0", "GENMESH_SHUTDOWN_GRACE": "1"})
    assert settings.prompt_max_length == LIMIT
    async with (
        running_prompt(settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        yield prompt_service_pb2_grpc.PromptServiceStub(channel)


async def test_validate_valid_prompt(stub: prompt_service_pb2_grpc.PromptServiceStub) -> None:
    reply = await stub.ValidatePrompt(
        prompt_service_pb2.ValidatePromptRequest(prompt="a red fox", task=TEXT)
    )
    assert reply.valid
    assert list(reply.violations) == []
    assert (reply.length, reply.max_length) == (9, LIMIT)


async def test_validate_reports_violations_without_failing(
    stub: prompt_service_pb2_grpc.PromptServiceStub,
) -> None:
    reply = await stub.ValidatePrompt(
        prompt_service_pb2.ValidatePromptRequest(prompt="\U0001f98a" * (LIMIT + 1), task=TEXT)
    )
    assert not reply.valid
    assert [v.code for v in reply.violations] == [core.TOO_LONG]
    assert "the limit is 10,000" in reply.violations[0].message
    assert reply.length == LIMIT + 1


async def test_validate_empty_depends_on_task(
    stub: prompt_service_pb2_grpc.PromptServiceStub,
) -> None:
    required = await stub.ValidatePrompt(prompt_service_pb2.ValidatePromptRequest(task=TEXT))
    assert [v.code for v in required.violations] == [core.EMPTY]
    optional = await stub.ValidatePrompt(
        prompt_service_pb2.ValidatePromptRequest(task=job_pb2.TASK_SPEECH_TO_TEXT)
    )
    assert optional.valid


@pytest.mark.parametrize("task", [job_pb2.TASK_UNSPECIFIED, Task(999)])
async def test_validate_without_a_task_is_invalid_argument(
    stub: prompt_service_pb2_grpc.PromptServiceStub, task: Task
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ValidatePrompt(prompt_service_pb2.ValidatePromptRequest(prompt="x", task=task))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "task is required"


async def test_analyze(stub: prompt_service_pb2_grpc.PromptServiceStub) -> None:
    reply = await stub.AnalyzePrompt(
        prompt_service_pb2.AnalyzePromptRequest(prompt="The cat sat on the mat.")
    )
    assert (reply.length, reply.words, reply.sentences) == (23, 6, 1)
    assert reply.readability == pytest.approx(116.15, abs=0.01)
    assert 0.0 <= reply.complexity <= 1.0
    assert list(reply.keywords) == ["cat", "sat", "mat"]


# --- the process -----------------------------------------------------------------------------


async def test_process_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    env["GENMESH_LISTEN"] = "127.0.0.1:0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.prompt",
        env=env,
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        port = await asyncio.wait_for(_listening_port(proc.stderr), timeout=20)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == 0, rest.decode()
        assert b"Traceback" not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _listening_port(stream: asyncio.StreamReader) -> int:
    seen = []
    while line := await stream.readline():
        seen.append(line.decode())
        if match := re.search(r"listening on \S+:(\d+)", seen[-1]):
            return int(match.group(1))
    raise AssertionError("service exited before listening:\n" + "".join(seen))
