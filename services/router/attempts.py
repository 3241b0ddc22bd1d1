"""A job's attempts: one per provider it was dispatched to, opened and closed on the Job."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from genmesh.v1 import job_pb2, provider_service_pb2

_OUTCOMES = {
    job_pb2.JOB_STATE_COMPLETED: job_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED: job_pb2.ATTEMPT_OUTCOME_FAILED,
    job_pb2.JOB_STATE_CANCELLED: job_pb2.ATTEMPT_OUTCOME_CANCELLED,
}
_RUNNING = job_pb2.ATTEMPT_OUTCOME_RUNNING


def current(job: job_pb2.Job) -> int:
    """The number of the job's current attempt (1 for jobs recorded before attempts were)."""
    return job.attempts[-1].attempt if job.attempts else 1


def open_attempt(
    job: job_pb2.Job,
    provider: provider_service_pb2.Provider,
    reason: str,
    start: timestamp_pb2.Timestamp,
    hedge: bool = False,
) -> job_pb2.Attempt:
    """Start the job's next attempt on `provider` (beside the running one, for a hedge)."""
    attempt = job.attempts.add(
        attempt=current(job) + 1 if job.attempts else 1,
        provider=provider.name,
        outcome=job_pb2.ATTEMPT_OUTCOME_RUNNING,
        cost_usd=provider.cost_per_job_usd,
        reason=reason,
        hedge=hedge,
    )
    attempt.start_time.CopyFrom(start)
    return attempt


def close_attempt(
    job: job_pb2.Job, event: job_pb2.JobEvent, number: int | None = None
) -> list[job_pb2.Attempt]:
    """End attempt `number` (None: every running attempt, as for the router's own events)
    with a terminal event's outcome; returns those it closed."""
    outcome = _OUTCOMES.get(event.state)
    if outcome is None:
        return []
    closed = []
    for attempt in job.attempts:
        if attempt.outcome != job_pb2.ATTEMPT_OUTCOME_RUNNING:
            continue
        if number is not None and attempt.attempt != number:
            continue
        attempt.outcome = outcome
        attempt.end_time.CopyFrom(event.time)
        if event.HasField("error"):
            attempt.error.CopyFrom(event.error)
        closed.append(attempt)
    return closed


def accepts_from(job: job_pb2.Job, number: int, newest: int) -> bool:
    """Whether a worker's event for attempt `number` still counts: its attempt is running
    (several may be, when one was hedged). Jobs recorded before attempts were only hear
    from their `newest` attempt."""
    if not job.attempts:
        return number == newest
    return number in running(job)


def carry_on(
    job: job_pb2.Job, failed: job_pb2.JobEvent, number: int | None
) -> job_pb2.JobEvent | None:
    """For a FAILED event from attempt `number` while another attempt still runs: close
    that attempt only and return the PROCESSING note to apply instead; else None."""
    others = [a for a in job.attempts if a.outcome == _RUNNING and a.attempt != number]
    if number is None or not others or number not in running(job):
        return None
    close_attempt(job, failed, number)
    survivor = others[-1].provider
    note = job_pb2.JobEvent(state=note_state(job), provider=survivor)
    note.time.CopyFrom(failed.time)
    note.progress.message = (
        f"attempt {number} failed ({failed.error.message or failed.error.code}); "
        f"carrying on with {survivor}"
    )
    return note


def cancel_losers(job: job_pb2.Job, won: job_pb2.JobEvent) -> list[job_pb2.Attempt]:
    """After a COMPLETED event: close every attempt still running as CANCELLED, having lost
    the hedge to the winner; returns them (their workers are to be told to stop)."""
    if won.state != job_pb2.JOB_STATE_COMPLETED:
        return []
    lost = job_pb2.JobEvent(state=job_pb2.JOB_STATE_CANCELLED)
    lost.time.CopyFrom(won.time)
    lost.error.code = "lost_hedge"
    lost.error.message = f"lost the hedge to {won.provider or job.provider}"
    return close_attempt(job, lost)


def note_state(job: job_pb2.Job) -> job_pb2.JobState.ValueType:
    """The state for a router note on a running job: a job that showed a preview stays
    PREVIEW_READY, as states only move forward; anything earlier becomes PROCESSING."""
    if job.state == job_pb2.JOB_STATE_PREVIEW_READY:
        return job.state
    return job_pb2.JOB_STATE_PROCESSING


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
