"""How a pipeline job's events move its steps' statuses (Job.pipeline) forward."""

from __future__ import annotations

from genmesh.v1 import job_pb2

_PROCESSING = job_pb2.JOB_STATE_PROCESSING
_PREVIEW = job_pb2.JOB_STATE_PREVIEW_READY
_COMPLETED = job_pb2.JOB_STATE_COMPLETED
_CANCELLED = job_pb2.JOB_STATE_CANCELLED
_STEP_ENDED = frozenset({_COMPLETED, job_pb2.JOB_STATE_FAILED, _CANCELLED})


def new_run(name: str, steps: list[job_pb2.PipelineStep]) -> job_pb2.PipelineRun:
    """Every step waiting (QUEUED), in order."""
    return job_pb2.PipelineRun(
        name=name,
        steps=[
            job_pb2.PipelineStepStatus(name=s.name, task=s.task, state=job_pb2.JOB_STATE_QUEUED)
            for s in steps
        ],
    )


def fold_step(job: job_pb2.Job, event: job_pb2.JobEvent, ended: bool) -> None:
    """Apply a pipeline job's event to its step statuses; `ended` when the pipeline ends with it.

    A step event carrying outputs is that step's completion; one with a preview shows the
    step's preview; any other marks it running. When the pipeline ends, no step is left
    waiting or running: one that had started ends as the pipeline did, and one that never
    started is CANCELLED, since it never will."""
    found = next((s for s in job.pipeline.steps if event.step and s.name == event.step), None)
    if found is not None:
        status = found
        if event.step_job_id:
            status.job_id = event.step_job_id
        if ended:
            status.state = event.state
        elif event.assets or event.output_text:
            status.state = _COMPLETED
        elif event.HasField("preview"):
            status.state = _PREVIEW
        elif status.state != _PREVIEW:
            status.state = _PROCESSING
        copy_outcome(status, event)
    if ended:
        for status in job.pipeline.steps:
            if status.state not in _STEP_ENDED:
                status.state = event.state if status.job_id else _CANCELLED


def copy_outcome(target: job_pb2.Job | job_pb2.PipelineStepStatus, event: job_pb2.JobEvent) -> None:
    """The event's assets, output text and error, onto a job or a step."""
    if event.assets:
        del target.assets[:]
        target.assets.extend(event.assets)
    if event.output_text:
        target.output_text = event.output_text
    if event.HasField("error"):
        target.error.CopyFrom(event.error)
