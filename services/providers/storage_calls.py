"""Storage calls made for a running job: a storage restart, or a disk full for a moment,
must not fail a job whose provider work is done, nor show up as an opaque adapter error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from services.common.backoff import doubling
from services.common.errors import TOO_LARGE, reason_of
from services.providers.adapter import Fatal, InvalidInput, ProviderError, Retryable

T = TypeVar("T")

# The error code of a job handed back because storage stayed out of reach; never the
# provider's fault.
STORAGE_UNAVAILABLE = "storage_unavailable"
# Seconds a call is retried before the job is handed back to run again later.
PATIENCE = 30.0
FIRST_DELAY = 0.1
MAX_DELAY = 2.0
# What a storage that is stopping, restarting, overloaded or out of disk answers.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


async def with_storage(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, retried with backoff while storage is out of reach (for PATIENCE seconds);
    a failure becomes a ProviderError saying what could not be done, and why."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE
    failures = 0
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            failures += 1
            delay = doubling(failures, FIRST_DELAY, MAX_DELAY)
            transient = exc.code() in _TRANSIENT and reason_of(exc) != TOO_LARGE
            if not transient or loop.time() + delay > give_up:
                raise classified(what, exc, transient) from exc
        await asyncio.sleep(delay)


def classified(what: str, exc: grpc.aio.AioRpcError, transient: bool) -> ProviderError:
    code = exc.code()
    said = f"{code.name if code else 'UNKNOWN'}: {exc.details() or 'no details'}"
    if transient:
        return Retryable(STORAGE_UNAVAILABLE, f"could not {what}: storage unavailable ({said})")
    if code == grpc.StatusCode.NOT_FOUND:
        return InvalidInput("input_not_found", f"could not {what}: {said}")
    return Fatal("storage_refused", f"could not {what}: storage refused it ({said})")
