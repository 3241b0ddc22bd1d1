"""How long one delivery of a job may run: the job's deadline and the attempt timeout.

Running out of attempt time is a retryable "timeout" (retried, then the next provider);
running out of the job's time is "deadline_exceeded", which nothing retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.errors import DEADLINE_EXCEEDED
from services.providers.adapter import Fatal, ProviderError, Retryable
from services.providers.storage_calls import STORAGE_UNAVAILABLE

TIMEOUT = "timeout"


class DeadlineExceeded(Fatal):
    """The job's whole time budget is spent; the provider is not to blame."""

    def __init__(self, message: str) -> None:
        super().__init__(DEADLINE_EXCEEDED, f"the job's deadline passed: {message}")


@dataclass(frozen=True)
class Budget:
    # Unix time the job must have ended by; None: no deadline.
    deadline: float | None = None
    # Seconds one attempt may take; None: no limit.
    attempt_timeout: float | None = None

    @classmethod
    def of(cls, job: job_pb2.Job, instance_attempt_timeout: float = 0.0) -> Budget:
        """The job's budget: its deadline, and its own attempt timeout else the instance's."""
        deadline = job.deadline.ToNanoseconds() / 1e9 if job.HasField("deadline") else None
        attempt = instance_attempt_timeout
        if job.spec.HasField("attempt_timeout"):
            attempt = job.spec.attempt_timeout.ToNanoseconds() / 1e9
        return cls(deadline, attempt if attempt > 0 else None)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (time.time() if now is None else now) >= self.deadline

    @asynccontextmanager
    async def bound(self) -> AsyncIterator[None]:
        """Run the body within the budget. At the limit the body is cancelled (so an adapter's
        cancellation path stops the remote work) and the ProviderError naming it is raised."""
        left = None if self.deadline is None else self.deadline - time.time()
        limits = [t for t in (left, self.attempt_timeout) if t is not None]
        if not limits:
            yield
            return
        by_deadline = left is not None and left <= min(limits)
        if by_deadline and left is not None and left <= 0:
            raise DeadlineExceeded("it ended before the provider was called")
        try:
            async with asyncio.timeout(min(limits)) as scope:
                yield
        except TimeoutError:
            if not scope.expired():
                raise  # the adapter's own timeout, already classified by it
            if by_deadline:
                raise DeadlineExceeded("the provider call was stopped") from None
            raise Retryable(
                TIMEOUT, f"the attempt took longer than its {self.attempt_timeout:g}s timeout"
            ) from None


_NOT_THE_PROVIDERS = frozenset({DEADLINE_EXCEEDED, STORAGE_UNAVAILABLE})


def provider_at_fault(exc: ProviderError) -> bool:
    """Whether a failure counts against the provider's health (not the caller's input, not
    the job's own deadline, not storage out of reach)."""
    return exc.kind != job_pb2.ERROR_KIND_INVALID_INPUT and exc.code not in _NOT_THE_PROVIDERS


def declare_limits(
    description: provider_service_pb2.Provider, max_deliver: int, attempt_timeout: float
) -> None:
    """Publish the instance's retry limit and attempt timeout in its catalog entry."""
    description.limits.max_retries = max(max_deliver - 1, 0)
    if attempt_timeout > 0:
        description.limits.attempt_timeout.FromNanoseconds(round(attempt_timeout * 1e9))
