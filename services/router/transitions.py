"""The job state machine: which events apply, and how an event changes a job."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.router.pipelines.status import copy_outcome, fold_step

TERMINAL = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)

_RANK = {
    job_pb2.JOB_STATE_QUEUED: 0,
    job_pb2.JOB_STATE_PROCESSING: 1,
    job_pb2.JOB_STATE_PREVIEW_READY: 2,
    job_pb2.JOB_STATE_COMPLETED: 3,
    job_pb2.JOB_STATE_FAILED: 3,
    job_pb2.JOB_STATE_CANCELLED: 3,
}

# States that may repeat: progress while processing, several previews.
_REPEATABLE = frozenset({job_pb2.JOB_STATE_PROCESSING, job_pb2.JOB_STATE_PREVIEW_READY})


def accepts(current: job_pb2.JobState.ValueType, new: job_pb2.JobState.ValueType) -> bool:
    """True when `new` moves a job in state `current` forward (or repeats a repeatable state)."""
    if current in TERMINAL or new not in _RANK:
        return False
    if new == current:
        return new in _REPEATABLE
    return _RANK[new] > _RANK[current]


def applied_state(
    current: job_pb2.JobState.ValueType, new: job_pb2.JobState.ValueType
) -> job_pb2.JobState.ValueType | None:
    """The state an event in state `new` leaves a job in `current` in; None when it does not
    apply. Progress reported after a preview (PROCESSING) is still progress: the job stays
    PREVIEW_READY, keeping its preview, rather than losing the report as a step backwards."""
    if current == job_pb2.JOB_STATE_PREVIEW_READY and new == job_pb2.JOB_STATE_PROCESSING:
        return current
    return new if accepts(current, new) else None


def fold(job: job_pb2.Job, event: job_pb2.JobEvent) -> None:
    """Apply an accepted, sequenced event to the job snapshot."""
    job.state = event.state
    job.last_sequence = event.sequence
    job.update_time.CopyFrom(event.time)
    if event.provider:
        job.provider = event.provider
    if event.provider_request_id:
        job.provider_request_id = event.provider_request_id
    if event.HasField("progress"):
        job.progress.CopyFrom(event.progress)
    if event.HasField("preview"):
        job.preview.CopyFrom(event.preview)
    ended = event.state in TERMINAL
    if job.HasField("pipeline"):
        fold_step(job, event, ended)
        if event.step and not ended:
            return  # a step's outputs are the step's; the pipeline's are its last step's
    copy_outcome(job, event)
