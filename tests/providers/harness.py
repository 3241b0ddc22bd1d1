"""Drives an adapter through the Adapter contract with an in-memory JobContext.

The adapter's HTTP really flows (to a fake server on loopback); only the runtime side of
the contract (storage, events, the request-id bucket) is kept in memory here."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from genmesh.v1 import asset_pb2, job_pb2
from services.providers.adapter import Output


class FakeContext:
    """A JobContext kept in memory: it serves inputs and records what the adapter reports."""

    def __init__(
        self,
        task: job_pb2.Task.ValueType,
        prompt: str = "",
        parameters: Mapping[str, Any] | None = None,
        inputs: Sequence[bytes] = (),
        *,
        provider: str = "sandbox",
        previous_request_id: str = "",
        input_media_type: str = "",
    ) -> None:
        spec = job_pb2.JobSpec(
            task=task, prompt=prompt, input_asset_ids=[f"in-{i}" for i in range(len(inputs))]
        )
        self._job = job_pb2.Job(id="job-1", tenant_id="default", spec=spec, provider=provider)
        self._parameters = dict(parameters or {})
        self._inputs = list(inputs)
        self._input_media_type = input_media_type
        self._started = time.monotonic()
        self._previous_request_id = previous_request_id
        # (what, seconds since start): the order and timing of everything reported.
        self.timeline: list[tuple[str, float]] = []
        self.progress_reports: list[tuple[float | None, str]] = []
        self.previews: list[Output] = []
        self.request_ids: list[str] = []

    @property
    def job(self) -> job_pb2.Job:
        return self._job

    @property
    def parameters(self) -> Mapping[str, Any]:
        return self._parameters

    async def previous_request_id(self) -> str:
        return self._previous_request_id

    async def read_input(self, index: int = 0) -> tuple[asset_pb2.Asset, bytes]:
        data = self._inputs[index]
        asset = asset_pb2.Asset(
            id=f"in-{index}",
            size_bytes=len(data),
            role=asset_pb2.ASSET_ROLE_INPUT,
            media_type=self._input_media_type,
        )
        return asset, data

    async def progress(self, percent: float | None = None, message: str = "") -> None:
        self.progress_reports.append((percent, message))
        self._mark(f"progress {message}")

    async def preview(self, output: Output) -> asset_pb2.Asset:
        self.previews.append(output)
        self._mark("preview")
        return asset_pb2.Asset(id=f"preview-{len(self.previews)}", media_type=output.media_type)

    async def record_request_id(self, request_id: str) -> None:
        self.request_ids.append(request_id)
        self._mark(f"request id {request_id}")

    def _mark(self, what: str) -> None:
        self.timeline.append((what, time.monotonic() - self._started))
