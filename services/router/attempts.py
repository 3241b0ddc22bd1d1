"""A job's attempts: one per provider it was dispatched to, opened and closed on the Job."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from genmesh.v1 import job_pb2, provider_service_pb2

_OUTCOMES = {
    job_pb2.JOB_STATE_COMPLETED: job_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED: job_pb2.ATTEMPT_OUTCOME_FAILED,
    job_pb2.JOB_STATE_CANCELLED: job_pb2.ATTEMPT_OUTCOME_CANCELLED,
}


def current(job: job_pb2.Job) -> int:
    """The number of the job's current attempt (1 for jobs recorded before attempts were)."""
    return job.attempts[-1].attempt if job.attempts else 1


def open_attempt(
    job: job_pb2.Job,
    provider: provider_service_pb2.Provider,
    reason: str,
    start: timestamp_pb2.Timestamp,
) -> job_pb2.Attempt:
    """Start the job's next attempt on `provider`."""
    attempt = job.attempts.add(
        attempt=current(job) + 1 if job.attempts else 1,
        provider=provider.name,
        outcome=job_pb2.ATTEMPT_OUTCOME_RUNNING,
        cost_usd=provider.cost_per_job_usd,
        reason=reason,
    )
    attempt.start_time.CopyFrom(start)
    return attempt


def close_attempt(job: job_pb2.Job, event: job_pb2.JobEvent) -> job_pb2.Attempt | None:
    """End the running attempt with a terminal event's outcome; returns it, if one was open."""
    outcome = _OUTCOMES.get(event.state)
    if outcome is None or not job.attempts:
        return None
    attempt = job.attempts[-1]
    if attempt.outcome != job_pb2.ATTEMPT_OUTCOME_RUNNING:
        return None
    attempt.outcome = outcome
    attempt.end_time.CopyFrom(event.time)
    if event.HasField("error"):
        attempt.error.CopyFrom(event.error)
    return attempt


def summary(job: job_pb2.Job) -> str:
    """ "sandbox-a (sandbox_injected_failure), sandbox-b (timeout)": who was tried, and how
    each failed."""
    parts = []
    for attempt in job.attempts:
        code = attempt.error.code or job_pb2.AttemptOutcome.Name(attempt.outcome)
        parts.append(f"{attempt.provider} ({code})")
    return ", ".join(parts)


def seconds(attempt: job_pb2.Attempt) -> float:
    """How long the attempt took from dispatch to outcome."""
    return (attempt.end_time.ToNanoseconds() - attempt.start_time.ToNanoseconds()) / 1e9


def running(job: job_pb2.Job) -> list[int]:
    """Numbers of the job's attempts still waiting for an outcome."""
    return [a.attempt for a in job.attempts if a.outcome == job_pb2.ATTEMPT_OUTCOME_RUNNING]


def ended_since(job: job_pb2.Job, running: list[int]) -> list[tuple[int, job_pb2.Attempt]]:
    """(task, attempt) for each of the `running` attempts that has an outcome now."""
    out = []
    for attempt in job.attempts:
        if attempt.attempt in running and attempt.outcome != job_pb2.ATTEMPT_OUTCOME_RUNNING:
            copy = job_pb2.Attempt()
            copy.CopyFrom(attempt)
            out.append((int(job.spec.task), copy))
    return out
