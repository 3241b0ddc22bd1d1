"""The runtime's side of JobContext: what an adapter may do while it runs a job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from genmesh.v1 import asset_pb2, job_pb2
from services.providers.adapter import InvalidInput, Output, Result
from services.providers.events import EventPublisher
from services.providers.storage_calls import with_storage
from services.storage.client import AssetClient


class RunContext:
    def __init__(
        self,
        *,
        job: job_pb2.Job,
        attempt: int,
        parameters: Mapping[str, Any],
        assets: AssetClient,
        events: EventPublisher,
        requests: KeyValue,
    ) -> None:
        self._job = job
        self._attempt = attempt
        self._parameters = parameters
        self._assets = assets
        self._events = events
        self._requests = requests
        self._previews = 0

    @property
    def job(self) -> job_pb2.Job:
        return self._job

    @property
    def parameters(self) -> Mapping[str, Any]:
        return self._parameters

    @property
    def _request_key(self) -> str:
        return f"{self._job.id}-{self._attempt}"

    async def previous_request_id(self) -> str:
        try:
            entry = await self._requests.get(self._request_key)
        except KeyNotFoundError:
            return ""
        return (entry.value or b"").decode()

    async def read_input(self, index: int = 0) -> tuple[asset_pb2.Asset, bytes]:
        ids = self._job.spec.input_asset_ids
        if index >= len(ids):
            raise InvalidInput("missing_input", f"this task needs input asset #{index + 1}")
        tenant = self._job.tenant_id
        what = f"read input asset {ids[index]!r}"
        asset = await with_storage(what, lambda: self._assets.get(ids[index], tenant=tenant))
        data = await with_storage(what, lambda: self._assets.download(ids[index], tenant=tenant))
        return asset, data

    async def progress(self, percent: float | None = None, message: str = "") -> None:
        event = job_pb2.JobEvent(state=job_pb2.JOB_STATE_PROCESSING, provider=self._job.provider)
        if percent is not None:
            event.progress.percent = max(0.0, min(100.0, percent))
        event.progress.message = message
        await self._events.publish(event)

    async def preview(self, output: Output, message: str = "") -> asset_pb2.Asset:
        self._previews += 1
        asset = await self._store(output, asset_pb2.ASSET_ROLE_PREVIEW, f"preview:{self._previews}")
        event = job_pb2.JobEvent(state=job_pb2.JOB_STATE_PREVIEW_READY, provider=self._job.provider)
        event.preview.CopyFrom(asset)
        if message:
            event.progress.message = message
        await self._events.publish(event)
        return asset

    async def record_request_id(self, request_id: str) -> None:
        await self._requests.put(self._request_key, request_id.encode())
        event = job_pb2.JobEvent(
            state=job_pb2.JOB_STATE_PROCESSING,
            provider=self._job.provider,
            provider_request_id=request_id,
        )
        event.progress.message = "submitted to provider"
        await self._events.publish(event)

    async def store_result(self, result: Result) -> list[asset_pb2.Asset]:
        """Upload every output (and the text, as text/plain); idempotent per job attempt."""
        outputs = list(result.outputs)
        if result.text and not any(o.media_type.startswith("text/") for o in outputs):
            outputs.append(Output(result.text.encode(), "text/plain; charset=utf-8", "output.txt"))
        return [
            await self._store(output, asset_pb2.ASSET_ROLE_OUTPUT, f"output:{i}")
            for i, output in enumerate(outputs)
        ]

    async def _store(
        self, output: Output, role: asset_pb2.AssetRole.ValueType, key: str
    ) -> asset_pb2.Asset:
        # The key is stable across deliveries (and retries), so a redelivered job reuses
        # what an earlier delivery already stored instead of storing it twice.
        return await with_storage(
            f"store {output.filename or key}",
            lambda: self._assets.upload(
                output.data,
                tenant=self._job.tenant_id,
                media_type=output.media_type,
                filename=output.filename,
                role=role,
                job_id=self._job.id,
                idempotency_key=f"{self._job.id}:{self._attempt}:{key}",
            ),
        )
