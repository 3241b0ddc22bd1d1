"""Task and job-state names as people type them ("text-to-image", "preview-ready") and as the
contract spells them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from genmesh.v1 import job_pb2

_PREFIX = "TASK_"
_STATE_PREFIX = "JOB_STATE_"


def task_from_name(name: str) -> job_pb2.Task.ValueType:
    """Parse "text-to-image", "TEXT_TO_IMAGE" or "TASK_TEXT_TO_IMAGE"; ValueError if unknown."""
    return job_pb2.Task.Value(_key(name, _PREFIX, job_pb2.Task.keys(), "task", task_names))


def task_name(task: job_pb2.Task.ValueType) -> str:
    """ "text-to-image" for TASK_TEXT_TO_IMAGE."""
    return _spoken(job_pb2.Task.Name(task), _PREFIX)


def task_names() -> list[str]:
    return [task_name(v) for v in job_pb2.Task.values() if v != job_pb2.TASK_UNSPECIFIED]


def state_from_name(name: str) -> job_pb2.JobState.ValueType:
    """Parse "processing", "PREVIEW_READY" or "JOB_STATE_QUEUED"; ValueError if unknown."""
    key = _key(name, _STATE_PREFIX, job_pb2.JobState.keys(), "state", state_names)
    return job_pb2.JobState.Value(key)


def state_name(state: job_pb2.JobState.ValueType) -> str:
    """ "preview-ready" for JOB_STATE_PREVIEW_READY."""
    return _spoken(job_pb2.JobState.Name(state), _STATE_PREFIX)


def state_names() -> list[str]:
    return [state_name(v) for v in job_pb2.JobState.values() if v]


def _key(
    name: str, prefix: str, keys: Iterable[str], what: str, known: Callable[[], list[str]]
) -> str:
    """The contract's name of an enum value spelled `name`; ValueError listing the known."""
    key = name.strip().upper().replace("-", "_")
    if not key.startswith(prefix):
        key = prefix + key
    if key == f"{prefix}UNSPECIFIED" or key not in set(keys):
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known())}")
    return key


def _spoken(key: str, prefix: str) -> str:
    return key.removeprefix(prefix).lower().replace("_", "-")


# Tasks that read an input asset, and the media types they accept.
INPUT_MEDIA: dict[int, tuple[str, ...]] = {
    job_pb2.TASK_IMAGE_TO_IMAGE: ("image/",),
    job_pb2.TASK_SPEECH_TO_TEXT: ("audio/",),
    job_pb2.TASK_IMAGE_TO_TEXT: ("image/",),
    job_pb2.TASK_IMAGE_TO_VIDEO: ("image/",),
}

# Every task the contract defines; every job state it defines, UNSPECIFIED (none given) too.
TASKS: frozenset[job_pb2.Task.ValueType] = frozenset(job_pb2.Task.values()) - {
    job_pb2.TASK_UNSPECIFIED
}
STATES: frozenset[job_pb2.JobState.ValueType] = frozenset(job_pb2.JobState.values())

# Tasks where the prompt is optional guidance rather than the whole request.
PROMPT_OPTIONAL: frozenset[job_pb2.Task.ValueType] = frozenset(
    {job_pb2.TASK_SPEECH_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT, job_pb2.TASK_IMAGE_TO_IMAGE}
)

# Tasks whose result is an image or a video: the ones prompt enhancement applies to.
VISUAL_TASKS: frozenset[job_pb2.Task.ValueType] = frozenset(
    {job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_IMAGE, job_pb2.TASK_IMAGE_TO_VIDEO}
)
# Tasks whose result is text; every other task's is a file.
TEXT_TASKS: frozenset[job_pb2.Task.ValueType] = frozenset(
    {job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_SPEECH_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT}
)
# Tasks a quick draft can be made for before the full result (JobSpec.draft_first).
DRAFT_TASKS = VISUAL_TASKS


def listed(tasks: Iterable[job_pb2.Task.ValueType]) -> str:
    """ "text-to-image, image-to-image and image-to-video": in the contract's order."""
    names = [task_name(t) for t in sorted(tasks)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
