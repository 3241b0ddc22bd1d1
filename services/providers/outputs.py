"""What an adapter's result must give the user before the job may complete."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.providers.adapter import InvalidInput, Result


def require_output(task: job_pb2.Task.ValueType, result: Result) -> None:
    """Refuse a transcript that heard nothing, instead of completing with nothing to show.

    Output text has no presence on the wire, so a job completed with an empty transcript and
    no asset could not be told from a provider that returned nothing at all. Silence stays
    silence at every provider: invalid input, so neither retried nor sent to another."""
    if task != job_pb2.TASK_SPEECH_TO_TEXT or result.outputs or result.text.strip():
        return
    raise InvalidInput("no_speech", "no speech was heard in the audio: the transcript is empty")
