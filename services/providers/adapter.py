"""The contract between the worker runtime and one provider adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from genmesh.v1 import asset_pb2, job_pb2, provider_service_pb2


class ProviderError(Exception):
    """A failure classified at the adapter boundary; `kind` decides retry, fallback or not."""

    kind: job_pb2.ErrorKind.ValueType = job_pb2.ERROR_KIND_FATAL

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # Seconds the provider asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after


class InvalidInput(ProviderError):
    """The request can never succeed as given: never retried."""

    kind = job_pb2.ERROR_KIND_INVALID_INPUT


class Retryable(ProviderError):
    """Timeouts, 429, 5xx, a busy provider: retried with backoff."""

    kind = job_pb2.ERROR_KIND_RETRYABLE


class Fatal(ProviderError):
    """Anything else that will not get better by trying again."""

    kind = job_pb2.ERROR_KIND_FATAL


@dataclass
class Output:
    """One produced file; storage works out size, sha256 and image/audio dimensions."""

    data: bytes
    media_type: str
    filename: str


@dataclass
class Result:
    outputs: list[Output] = field(default_factory=list)
    # For text tasks; the runtime also stores it as a text/plain output.
    text: str = ""


class JobContext(Protocol):
    """What an adapter may do while it runs one job. The runtime implements it."""

    @property
    def job(self) -> job_pb2.Job: ...

    @property
    def parameters(self) -> Mapping[str, Any]:
        """The job's parameters as plain Python values, defaults applied."""
        ...

    async def previous_request_id(self) -> str:
        """The provider request id recorded by an earlier delivery of this job, or ""."""
        ...

    async def read_input(self, index: int = 0) -> tuple[asset_pb2.Asset, bytes]:
        """Metadata and bytes of the job's index-th input asset."""
        ...

    async def progress(self, percent: float | None = None, message: str = "") -> None:
        """Report progress; each call becomes a PROCESSING event, so throttle chatty sources."""
        ...

    async def preview(self, output: Output) -> asset_pb2.Asset:
        """Store a preview and emit PREVIEW_READY with it."""
        ...

    async def record_request_id(self, request_id: str) -> None:
        """Record the provider's request id durably before waiting on it."""
        ...


class Adapter(Protocol):
    """One provider instance. `run` is cancelled (CancelledError) when the job is cancelled."""

    @property
    def name(self) -> str: ...

    def describe(self) -> provider_service_pb2.Provider:
        """Capabilities: tasks, parameters with limits, cost. Health is filled by the runtime."""
        ...

    async def check(self) -> str:
        """ "" when usable; otherwise why not (missing key, binary, unreachable endpoint)."""
        ...

    async def run(self, ctx: JobContext) -> Result: ...

    async def aclose(self) -> None:
        """Release connections and processes; called once when the worker stops."""
        ...
