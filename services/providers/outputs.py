"""What an adapter's result must give the user before the job may complete."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.common.tasks import TEXT_TASKS, task_name
from services.providers.adapter import InvalidInput, Result, Retryable

NO_TEXT = "no_text"


def require_output(task: job_pb2.Task.ValueType, provider: str, result: Result) -> None:
    """Refuse a result with nothing to show (no file, and for a text task no non-blank text),
    instead of completing with it.

    Output text has no presence on the wire, so a job completed empty could not be told from
    one whose outputs were lost. Silence heard by speech-to-text stays silence at every
    provider: invalid input ("no_speech"), so neither retried nor sent to another. Any other
    empty answer is the provider's failure, not the caller's: retryable ("empty_output"), as
    another try or another provider may answer."""
    if result.outputs or (task in TEXT_TASKS and result.text.strip()):
        return
    if task == job_pb2.TASK_SPEECH_TO_TEXT:
        raise InvalidInput("no_speech", "no speech was heard in the audio: the transcript is empty")
    what = "text" if task in TEXT_TASKS else "output file"
    raise Retryable("empty_output", f"{provider} returned no {what} for {task_name(task)}")


def no_text(provider: str, limit_name: str, limit: object) -> InvalidInput:
    """The answer's token limit ran out before any visible text: the caller's setting, not
    the provider's failure (a reasoning model may spend it all thinking)."""
    spent = f"{limit_name} ({limit})" if limit is not None else f"its default {limit_name}"
    return InvalidInput(
        NO_TEXT,
        f"{provider} used up {spent} before writing any text (reasoning models spend tokens "
        f"thinking first): raise {limit_name}",
    )
