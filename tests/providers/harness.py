"""Drives an adapter through the Adapter contract with an in-memory JobContext.

The adapter's HTTP really flows (to a fake server on loopback); only the runtime side of
the contract (storage, events, the request-id bucket) is kept in memory here. The helpers
below are what every adapter's tests share: a catalog entry, hosting a fake, one run that
closes the adapter, waiting for a condition and cancelling a run midway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, Protocol, TypeVar

import pytest
from starlette.applications import Starlette

from genmesh.v1 import asset_pb2, job_pb2
from services.providers.adapter import Adapter, JobContext, Output, Result
from services.providers.config import ProviderConfig
from tests.fakes.server import serving
from tests.infra import eventually


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


def provider_config(
    family: str,
    base_url: str,
    key: str,
    models: Mapping[str, str],
    *,
    name: str = "",
    key_env: str = "",
    options: Mapping[str, Any] | None = None,
    poll_interval: float = 0.01,
    timeout: float = 60.0,
) -> ProviderConfig:
    """A catalog entry (named after its family unless told) holding `key`, polling briskly."""
    return ProviderConfig(
        name=name or family,
        family=family,
        base_url=base_url,
        api_key_env=key_env,
        models=dict(models),
        timeout=timeout,
        poll_interval=poll_interval,
        options=dict(options or {}),
        _api_key=key,
    )


async def run_once(adapter: Adapter, ctx: JobContext) -> Result:
    """Run one job on `adapter`, then close it however the run ended."""
    async with aclosing(adapter):
        return await adapter.run(ctx)


async def wait_until(condition: Callable[[], Any], seconds: float = 3.0) -> None:
    """Poll `condition` every 10 ms (a fake on loopback answers fast); fail after `seconds`."""
    await eventually(condition, within=seconds, interval=0.01)


async def cancel_when(
    run: Coroutine[Any, Any, Result],
    ready: Callable[[], Any],
    seconds: float = 3.0,
    *,
    afterwards: Callable[[], Any] | None = None,
) -> None:
    """Start `run`, cancel it once `ready()` holds and check that it ended cancelled; then
    wait for `afterwards()` too (the fake noticing the hang-up), if given."""
    task = asyncio.create_task(run)
    try:
        await wait_until(ready, seconds)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if afterwards is not None:
        await wait_until(afterwards, seconds)


class Hostable(Protocol):
    """A fake provider that needs to know the URL it is served at (for links it hands out)."""

    url: str

    def app(self) -> Starlette: ...


HostableT = TypeVar("HostableT", bound=Hostable)


@asynccontextmanager
async def hosted(fake: HostableT) -> AsyncIterator[HostableT]:
    """Serve `fake` on a loopback port, telling it its own URL."""
    async with serving(fake.app()) as url:
        fake.url = url
        yield fake
