"""Whole-job deadlines: when a job must end, and how it fails when it does not.

Workers bound a running job by its deadline themselves; the fallback never starts an attempt
past it, and the sweeper (services/router/sweeper.py) fails jobs still waiting at it.
"""

from __future__ import annotations

import time

from google.protobuf import timestamp_pb2

from genmesh.v1 import job_pb2
from services.common.errors import DEADLINE_EXCEEDED, InvalidArgument

# The latest time a Timestamp holds (9999-12-31T23:59:59Z), in seconds since the epoch.
LAST_DEADLINE = 253_402_300_799


def job_deadline(
    spec: job_pb2.JobSpec, call_remaining: float | None = None, now: float | None = None
) -> timestamp_pb2.Timestamp | None:
    """The job's deadline: now + spec.timeout or the call's remaining time, whichever is
    sooner; None when neither is given. InvalidArgument for a timeout that is not positive,
    a negative attempt_timeout or hedge_after (the spec's other time budgets), or any of the
    three out of Duration's range."""
    for budget in ("timeout", "attempt_timeout", "hedge_after"):
        # Protobuf does not check a Duration as it parses one; an invalid one was stored
        # and then failed every JSON view of the job (the bridge's GET and list: 500).
        try:
            getattr(spec, budget).ToJsonString()
        except ValueError as e:
            why = str(e).removeprefix("Duration is not valid: ")
            raise InvalidArgument(f"{budget} is not a valid Duration: {why}") from None
    for name in ("attempt_timeout", "hedge_after"):
        # Negative ones were taken as unset, or (attempt_timeout) as no limit at all,
        # overriding the provider's own.
        if spec.HasField(name) and getattr(spec, name).ToNanoseconds() < 0:
            given = getattr(spec, name).ToNanoseconds() / 1e9
            raise InvalidArgument(f"{name} must not be negative, got {given:g}s")
    budgets = []
    if spec.HasField("timeout"):
        timeout = spec.timeout.ToNanoseconds() / 1e9
        if timeout <= 0:
            raise InvalidArgument(
                f"timeout must be positive, got {timeout:g}s; leave it unset for no deadline"
            )
        budgets.append(timeout)
    if call_remaining is not None:
        budgets.append(max(call_remaining, 0.0))
    if not budgets:
        return None
    at = (time.time() if now is None else now) + min(budgets)
    if at > LAST_DEADLINE:
        if spec.HasField("timeout") and timeout <= min(budgets):
            raise InvalidArgument(
                f"timeout {timeout:g}s is too long: the deadline would fall after year 9999"
            )
        # Only the caller's own call deadline is that far off: it bounds nothing in practice.
        return timestamp_pb2.Timestamp(seconds=LAST_DEADLINE)
    deadline = timestamp_pb2.Timestamp()
    deadline.FromNanoseconds(round(at * 1e9))
    return deadline


def expired(job: job_pb2.Job, at: timestamp_pb2.Timestamp) -> bool:
    """True when the job has a deadline and `at` is at or past it."""
    return job.HasField("deadline") and at.ToNanoseconds() >= job.deadline.ToNanoseconds()


def mark_exceeded(event: job_pb2.JobEvent, why: str = "") -> None:
    """Make `event` the job's failure for running out of time (never retried, no fallback)."""
    event.state = job_pb2.JOB_STATE_FAILED
    event.error.code = DEADLINE_EXCEEDED
    event.error.kind = job_pb2.ERROR_KIND_FATAL
    event.error.message = "the job's deadline passed" + (f": {why}" if why else "")
