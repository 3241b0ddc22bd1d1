"""What an adapter's result must give the user before the job may complete."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.common.tasks import TEXT_TASKS, task_name
from services.providers.adapter import Fatal, InvalidInput, Result

EMPTY_OUTPUT = "empty_output"
NO_TEXT = "no_text"


def require_output(task: job_pb2.Task.ValueType, provider: str, result: Result) -> None:
    """Refuse a result with nothing to show (no output file, and for a text task no non-blank
    text), or with a file that holds no bytes, instead of completing with it.

    Output text has no presence on the wire, so a job completed empty could not be told from
    one whose outputs were lost; and storage refuses an empty file, which would read as
    storage's fault. Silence heard by speech-to-text stays silence at every provider: invalid
    input ("no_speech"). Any other empty answer is the provider's, and fatal ("empty_output"):
    a provider that resumes a recorded request (fal, replicate, ...) would only fetch the
    same empty result again, and a chat provider would bill another generation. Empty answers
    the caller's own settings explain (a token limit spent before any text) are the adapter's
    to report as invalid input (`no_text`)."""
    empty = [o.filename or o.media_type for o in result.outputs if not o.data]
    if empty:
        # The files with bytes would be stored and the job then fail on the empty one.
        files = ", ".join(empty)
        raise Fatal(
            EMPTY_OUTPUT, f"{provider} returned an empty file ({files}) for {task_name(task)}"
        )
    if result.outputs or (task in TEXT_TASKS and result.text.strip()):
        return
    if task == job_pb2.TASK_SPEECH_TO_TEXT:
        raise InvalidInput("no_speech", "no speech was heard in the audio: the transcript is empty")
    what = "text" if task in TEXT_TASKS else "output file"
    raise Fatal(EMPTY_OUTPUT, f"{provider} returned no {what} for {task_name(task)}")


def no_text(provider: str, limit_name: str, limit: object) -> InvalidInput:
    """The answer's token limit ran out before any visible text: the caller's setting, not
    the provider's failure (a reasoning model may spend it all thinking)."""
    spent = f"{limit_name} ({limit})" if limit is not None else f"its default {limit_name}"
    return InvalidInput(
        NO_TEXT,
        f"{provider} used up {spent} before writing any text (reasoning models spend tokens "
        f"thinking first): raise {limit_name}",
    )
