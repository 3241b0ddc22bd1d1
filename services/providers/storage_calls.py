"""Storage calls made for a running job: a storage restart, or a disk full for a moment,
must not fail a job whose provider work is done, nor show up as an opaque adapter error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from services.common.backoff import patiently
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
    try:
        return await patiently(
            call, _transient, patience=PATIENCE, first=FIRST_DELAY, most=MAX_DELAY
        )
    except grpc.aio.AioRpcError as exc:
        raise classified(what, exc, _transient(exc)) from exc


def _transient(exc: Exception) -> bool:
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() in _TRANSIENT
        and reason_of(exc) != TOO_LARGE
    )


def classified(what: str, exc: grpc.aio.AioRpcError, transient: bool) -> ProviderError:
    code = exc.code()
    said = f"{code.name if code else 'UNKNOWN'}: {exc.details() or 'no details'}"
    if transient:
        return Retryable(STORAGE_UNAVAILABLE, f"could not {what}: storage unavailable ({said})")
    if code == grpc.StatusCode.NOT_FOUND:
        return InvalidInput("input_not_found", f"could not {what}: {said}")
    return Fatal("storage_refused", f"could not {what}: storage refused it ({said})")
