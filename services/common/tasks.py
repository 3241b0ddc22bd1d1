"""Task and job-state names as people type them ("text-to-image", "preview-ready") and as the
contract spells them."""

from __future__ import annotations

from genmesh.v1 import job_pb2

_PREFIX = "TASK_"


def task_from_name(name: str) -> job_pb2.Task.ValueType:
    """Parse "text-to-image", "TEXT_TO_IMAGE" or "TASK_TEXT_TO_IMAGE"; ValueError if unknown."""
    key = name.strip().upper().replace("-", "_")
    if not key.startswith(_PREFIX):
        key = _PREFIX + key
    if key == "TASK_UNSPECIFIED" or key not in set(job_pb2.Task.keys()):
        raise ValueError(f"unknown task {name!r}; known: {', '.join(task_names())}")
    return job_pb2.Task.Value(key)


def task_name(task: job_pb2.Task.ValueType) -> str:
    """ "text-to-image" for TASK_TEXT_TO_IMAGE."""
    return job_pb2.Task.Name(task).removeprefix(_PREFIX).lower().replace("_", "-")


def task_names() -> list[str]:
    return [task_name(v) for v in job_pb2.Task.values() if v != job_pb2.TASK_UNSPECIFIED]


_STATE_PREFIX = "JOB_STATE_"


def state_name(state: job_pb2.JobState.ValueType) -> str:
    """ "preview-ready" for JOB_STATE_PREVIEW_READY."""
    return job_pb2.JobState.Name(state).removeprefix(_STATE_PREFIX).lower().replace("_", "-")


def state_names() -> list[str]:
    return [state_name(v) for v in job_pb2.JobState.values() if v]


def state_from_name(name: str) -> job_pb2.JobState.ValueType:
    """Parse "processing", "PREVIEW_READY" or "JOB_STATE_QUEUED"; ValueError if unknown."""
    key = name.strip().upper().replace("-", "_")
    if not key.startswith(_STATE_PREFIX):
        key = _STATE_PREFIX + key
    if key == "JOB_STATE_UNSPECIFIED" or key not in set(job_pb2.JobState.keys()):
        raise ValueError(f"unknown state {name!r}; known: {', '.join(state_names())}")
    return job_pb2.JobState.Value(key)


# Tasks that read an input asset, and the media types they accept.
INPUT_MEDIA: dict[int, tuple[str, ...]] = {
    job_pb2.TASK_IMAGE_TO_IMAGE: ("image/",),
    job_pb2.TASK_SPEECH_TO_TEXT: ("audio/",),
    job_pb2.TASK_IMAGE_TO_TEXT: ("image/",),
    job_pb2.TASK_IMAGE_TO_VIDEO: ("image/",),
}

# Tasks where the prompt is optional guidance rather than the whole request.
PROMPT_OPTIONAL: frozenset[int] = frozenset(
    {job_pb2.TASK_SPEECH_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT, job_pb2.TASK_IMAGE_TO_IMAGE}
)

# Tasks whose result is an image or a video: the ones prompt enhancement applies to.
VISUAL_TASKS: frozenset[job_pb2.Task.ValueType] = frozenset(
    {job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_IMAGE, job_pb2.TASK_IMAGE_TO_VIDEO}
)
# Tasks a quick draft can be made for before the full result (JobSpec.draft_first).
DRAFT_TASKS = VISUAL_TASKS
