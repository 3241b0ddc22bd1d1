"""What a result must hold before its job may complete (services.providers.outputs)."""

from __future__ import annotations

import pytest

from genmesh.v1 import job_pb2
from services.common.tasks import task_name
from services.providers.adapter import Fatal, InvalidInput, Output, Result
from services.providers.budget import provider_at_fault
from services.providers.outputs import no_text, require_output

ALL_TASKS = [t for t in job_pb2.Task.values() if t != job_pb2.TASK_UNSPECIFIED]
TEXT = [job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT, job_pb2.TASK_SPEECH_TO_TEXT]
FILE = [t for t in ALL_TASKS if t not in TEXT]
PNG = Output(b"\x89PNG...", "image/png", "image.png")


@pytest.mark.parametrize("task", ALL_TASKS, ids=task_name)
def test_any_output_file_is_something_to_show(task: job_pb2.Task.ValueType) -> None:
    require_output(task, "p", Result([PNG]))


@pytest.mark.parametrize("task", TEXT, ids=task_name)
def test_a_text_task_may_answer_with_text_alone(task: job_pb2.Task.ValueType) -> None:
    require_output(task, "p", Result(text="an answer"))


@pytest.mark.parametrize("text", ["", " \n\t"])
@pytest.mark.parametrize("task", [job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT])
def test_a_blank_answer_is_the_providers_failure_and_fatal(
    task: job_pb2.Task.ValueType, text: str
) -> None:
    # Fatal, not retryable: asking again would pay for another generation, or (a recorded
    # request resumed) fetch the same empty result.
    with pytest.raises(Fatal) as raised:
        require_output(task, "openai", Result(text=text))
    assert raised.value.code == "empty_output"
    assert raised.value.kind == job_pb2.ERROR_KIND_FATAL
    assert raised.value.message == f"openai returned no text for {task_name(task)}"
    assert provider_at_fault(raised.value)


@pytest.mark.parametrize("task", FILE, ids=task_name)
def test_a_file_task_without_a_file_fails_even_with_text(task: job_pb2.Task.ValueType) -> None:
    for result in (Result(), Result(text="I cannot draw that")):
        with pytest.raises(Fatal) as raised:
            require_output(task, "fal", result)
        assert raised.value.code == "empty_output"
        assert raised.value.message == f"fal returned no output file for {task_name(task)}"


def test_silence_stays_no_speech_invalid_input() -> None:
    with pytest.raises(InvalidInput) as raised:
        require_output(job_pb2.TASK_SPEECH_TO_TEXT, "whisper", Result(text=" "))
    assert raised.value.code == "no_speech"


EMPTY = Output(b"", "image/png", "image-2.png")


@pytest.mark.parametrize("task", ALL_TASKS, ids=task_name)
def test_a_file_with_no_bytes_is_nothing_to_show(task: job_pb2.Task.ValueType) -> None:
    # Storage would refuse it ("upload has no bytes"), blaming storage for the provider's
    # answer; among good files, those would be stored before the job failed on it.
    for result in (Result([EMPTY]), Result([PNG, EMPTY]), Result([EMPTY], text="an answer")):
        with pytest.raises(Fatal) as raised:
            require_output(task, "fal", result)
        assert raised.value.code == "empty_output"
        assert raised.value.message == (
            f"fal returned an empty file (image-2.png) for {task_name(task)}"
        )


def test_no_text_tells_the_caller_which_limit_to_raise() -> None:
    error = no_text("openai", "max_tokens", 16)
    assert isinstance(error, InvalidInput) and not provider_at_fault(error)
    assert error.code == "no_text"
    assert error.message == (
        "openai used up max_tokens (16) before writing any text (reasoning models spend "
        "tokens thinking first): raise max_tokens"
    )
    unset = no_text("ollama", "max_tokens", None)
    assert unset.message.startswith("ollama used up its default max_tokens before writing")
