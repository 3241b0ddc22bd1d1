"""Domain errors and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import errno
import logging

import grpc

log = logging.getLogger(__name__)

# A job's error code once its whole time budget is spent: set by the worker that ran out of
# it and by the router that gave up on it, and never blamed on a provider.
DEADLINE_EXCEEDED = "deadline_exceeded"

# Trailing metadata that says why a call failed where its code alone does not: a
# RESOURCE_EXHAUSTED is either "too large" (send less; waiting will not help) or "too many,
# too soon" (retry later), and HTTP answers them differently (413 and 429).
REASON_KEY = "genmesh-reason"
# The reason of a request, upload or message over a size limit.
TOO_LARGE = "TOO_LARGE"
# A status message's most bytes (see clipped); non-ASCII bytes travel percent-encoded, as 3.
MAX_DETAIL_BYTES = 1024


class CannotStart(Exception):
    """A service cannot start as configured (a bucket missing, NATS names another mesh
    holds): said in one line by run_service, which exits 1, rather than as a traceback."""


class MeshError(Exception):
    """An error a caller should see, with the gRPC code it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # Sent as REASON_KEY when set; see reason_of().
    reason: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(MeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooLarge(ResourceExhausted):
    """Over a size limit: the same request will never fit, unlike one refused at a queue bound."""

    reason = TOO_LARGE


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


class OutOfRange(MeshError):
    code = grpc.StatusCode.OUT_OF_RANGE


class DataLoss(MeshError):
    """Something stored is gone or damaged (an asset whose bytes are missing): not the
    caller's doing, and asking again will not bring it back."""

    code = grpc.StatusCode.DATA_LOSS


def status_of(exc: Exception, where: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller sees for `exc`: a MeshError's own; RESOURCE_EXHAUSTED
    for a full disk; UNAVAILABLE when something the call needs did not answer (see
    unreachable); else INTERNAL. The traceback goes to the log, never to the caller."""
    if isinstance(exc, MeshError):
        return exc.code, clipped(exc.message)
    if disk_full(exc):
        # Not the caller's fault, and may pass: a worker storing an output retries it.
        log.error("no space left on the disk, in %s", where)
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the service's disk is full; try again later"
    if unreachable(exc):
        log.warning("%s failed: a service it needs did not answer", where, exc_info=exc)
        return grpc.StatusCode.UNAVAILABLE, UNREACHABLE
    log.error("unhandled error in %s", where, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"


UNREACHABLE = "a service this call needs (database or message bus) did not answer; retry later"
# SQLite's SQLITE_FULL and PostgreSQL's disk_full SQLSTATE.
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or the driver error SQLAlchemy wraps, or its cause) is a full disk."""
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if getattr(seen, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if getattr(seen, "sqlstate", None) == _PG_DISK_FULL:
            return True
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return False


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says a service was out of reach (refused, reset, timed out: the database,
    NATS), so the same call may succeed later."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    # SQLAlchemy's DBAPIError for a database connection that broke; read by attribute so that
    # services without a database do not import SQLAlchemy for it.
    return getattr(exc, "connection_invalidated", False) is True


def clipped(message: str) -> str:
    """`message` cut to MAX_DETAIL_BYTES of UTF-8. A status message travels in a header,
    and one that echoes a huge value would pass a client's metadata limit (16 KiB by
    default): the caller would get an unrelated RESOURCE_EXHAUSTED instead."""
    encoded = message.encode()
    if len(encoded) <= MAX_DETAIL_BYTES:
        return message
    return encoded[:MAX_DETAIL_BYTES].decode(errors="ignore") + " …"


def reason_metadata(exc: Exception) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries `exc`'s reason, if it has one."""
    reason = exc.reason if isinstance(exc, MeshError) else ""
    return ((REASON_KEY, reason),) if reason else ()


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The reason a failed call's trailing metadata carries; "" when it carries none (gRPC's
    own refusals, such as a message over the size limit, never do)."""
    trailers = error.trailing_metadata()
    reason = trailers.get(REASON_KEY) if trailers is not None else None
    return reason if isinstance(reason, str) else ""
