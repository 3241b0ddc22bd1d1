"""Domain errors and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


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
