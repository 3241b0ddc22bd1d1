"""How a new job is recorded: its id, its first event, and what a reused idempotency key means."""

from __future__ import annotations

import hashlib
import uuid

from genmesh.v1 import job_pb2
from services.common.errors import FailedPrecondition


def queued_event(job: job_pb2.Job) -> job_pb2.JobEvent:
    """A new job's first event (sequence 1), as stored with it and sent to its watchers."""
    event = job_pb2.JobEvent(
        job_id=job.id, sequence=1, state=job_pb2.JOB_STATE_QUEUED, provider=job.provider
    )
    event.time.CopyFrom(job.create_time)
    if job.HasField("progress"):
        event.progress.CopyFrom(job.progress)
    return event


def new_job_id() -> str:
    return "j_" + uuid.uuid4().hex


def spec_hash(spec: job_pb2.JobSpec) -> str:
    """What a reused idempotency key is compared by: the spec without its key, and with the
    ways of saying the same thing spelled one way (priority NORMAL is the default; empty
    parameters, the job's or a pipeline step's, are none), so a retry that spells them
    differently is the same request."""
    clean = job_pb2.JobSpec()
    clean.CopyFrom(spec)
    clean.idempotency_key = ""
    if clean.priority == job_pb2.PRIORITY_NORMAL:
        # Unspecified is the common spelling, and the one hashes stored earlier were made of.
        clean.priority = job_pb2.PRIORITY_UNSPECIFIED
    _drop_empty_parameters(clean)
    for step in clean.pipeline.steps:
        _drop_empty_parameters(step)
    return hashlib.sha256(clean.SerializeToString(deterministic=True)).hexdigest()


def _drop_empty_parameters(holder: job_pb2.JobSpec | job_pb2.PipelineStep) -> None:
    if holder.HasField("parameters") and not holder.parameters.fields:
        holder.ClearField("parameters")


def same_or_conflict(earlier: tuple[job_pb2.Job, str], incoming: str) -> job_pb2.Job:
    """The earlier job for a reused key, or FailedPrecondition if it was for another spec
    (`incoming` is the new request's spec_hash)."""
    job, earlier_hash = earlier
    # A hash stored before the defaults were spelled one way (see spec_hash) differs for the
    # same request: the earlier job's spec as it was asked for, hashed as now, settles it.
    if earlier_hash != incoming and spec_hash(_as_requested(job)) != incoming:
        raise FailedPrecondition(
            f"idempotency key {job.spec.idempotency_key!r} was used for a different request "
            f"(job {job.id})"
        )
    return job


def _as_requested(job: job_pb2.Job) -> job_pb2.JobSpec:
    """The spec a job was asked for: its stored spec holds the parameters as the provider
    takes them (defaults filled in), its routing the ones the caller sent."""
    spec = job_pb2.JobSpec()
    spec.CopyFrom(job.spec)
    spec.parameters.CopyFrom(job.routing.requested_parameters)
    return spec
