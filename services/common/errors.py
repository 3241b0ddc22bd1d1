"""Domain errors and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import logging

import grpc

log = logging.getLogger(__name__)

# A job's error code once its whole time budget is spent: set by the worker that ran out of
# it and by the router that gave up on it, and never blamed on a provider.
DEADLINE_EXCEEDED = "deadline_exceeded"


class MeshError(Exception):
    """An error a caller should see, with the gRPC code it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

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


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


class OutOfRange(MeshError):
    code = grpc.StatusCode.OUT_OF_RANGE


def status_of(exc: Exception, where: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller sees for `exc`: a MeshError's own, else INTERNAL (the
    traceback goes to the log, never to the caller)."""
    if isinstance(exc, MeshError):
        return exc.code, exc.message
    log.error("unhandled error in %s", where, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"
