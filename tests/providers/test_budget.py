"""A delivery's time budget (attempt timeout, job deadline), the retry backoff, and the limits
an instance publishes."""

from __future__ import annotations

import asyncio
import time

import pytest

from genmesh.v1 import job_pb2, provider_service_pb2
from services.providers.adapter import Retryable
from services.providers.budget import (
    DEADLINE_EXCEEDED,
    Budget,
    DeadlineExceeded,
    declare_limits,
    provider_at_fault,
)
from services.providers.runtime import backoff


def test_backoff_stays_within_the_exponential_ceiling() -> None:
    for delivery, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (7, 30.0), (40, 30.0)]:
        draws = [backoff(delivery, None) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in draws)
        # Full jitter: spread over the whole range, not bunched at the ceiling.
        assert min(draws) < ceiling * 0.1 and max(draws) > ceiling * 0.9


def test_backoff_never_comes_sooner_than_retry_after() -> None:
    for retry_after in (0.2, 1.5, 7.0, 120.0):
        draws = [backoff(3, retry_after) for _ in range(2000)]
        assert all(d >= retry_after for d in draws)
        assert all(d <= max(2.0, retry_after) for d in draws)


def job(timeout_s: float | None = None, attempt_s: float | None = None) -> job_pb2.Job:
    j = job_pb2.Job(id="j")
    if timeout_s is not None:
        j.deadline.FromNanoseconds(round((time.time() + timeout_s) * 1e9))
    if attempt_s is not None:
        j.spec.attempt_timeout.FromNanoseconds(round(attempt_s * 1e9))
    return j


def test_the_jobs_attempt_timeout_wins_over_the_instances() -> None:
    assert Budget.of(job(), 3.0).attempt_timeout == 3.0
    assert Budget.of(job(attempt_s=0.5), 3.0).attempt_timeout == 0.5
    assert Budget.of(job(), 0.0) == Budget(None, None)
    assert not Budget.of(job(timeout_s=5)).expired()
    assert Budget.of(job(timeout_s=-1)).expired()


async def test_attempt_timeout_cancels_the_call_and_is_retryable() -> None:
    cancelled = asyncio.Event()

    async def provider_call() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(Retryable) as err:
        async with Budget.of(job(timeout_s=30), 0.2).bound():
            await provider_call()
    assert 0.2 <= time.monotonic() - started < 5
    assert err.value.code == "timeout" and "0.2s" in err.value.message
    assert cancelled.is_set()
    assert provider_at_fault(err.value)


async def test_deadline_stops_the_call_and_is_fatal() -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as err:
        async with Budget.of(job(timeout_s=0.3), 10.0).bound():
            await asyncio.sleep(30)
    assert 0.2 <= time.monotonic() - started < 5
    assert err.value.code == DEADLINE_EXCEEDED
    assert err.value.kind == job_pb2.ERROR_KIND_FATAL
    assert not provider_at_fault(err.value)
    # Already past it: the call is never made.
    ran = False
    with pytest.raises(DeadlineExceeded):
        async with Budget.of(job(timeout_s=-1)).bound():
            ran = True
    assert not ran


async def test_within_budget_and_the_adapters_own_timeouts_pass_through() -> None:
    async with Budget.of(job(timeout_s=5), 5.0).bound():
        await asyncio.sleep(0.01)
    async with Budget().bound():
        await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        async with Budget.of(job(), 5.0).bound():
            raise TimeoutError("the adapter's own")


def test_limits_published_with_the_instance() -> None:
    description = provider_service_pb2.Provider(name="a")
    declare_limits(description, max_deliver=3, attempt_timeout=1.5)
    assert description.limits.max_retries == 2
    assert description.limits.attempt_timeout.ToNanoseconds() == 1_500_000_000
    plain = provider_service_pb2.Provider(name="b")
    declare_limits(plain, max_deliver=1, attempt_timeout=0)
    assert plain.limits.max_retries == 0 and not plain.limits.HasField("attempt_timeout")
