"""A stopping worker, against a real JetStream."""

from __future__ import annotations

import asyncio

import pytest

from services.providers import runtime
from services.providers.runtime import ProviderWorker, Shared, WorkerOptions
from services.providers.sandbox.adapter import SandboxAdapter


async def test_a_stopping_worker_ends_its_fetch_at_once(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fetch that would wait far longer than the guard below for a job that never comes.
    monkeypatch.setattr(runtime, "FETCH_WAIT", 60.0)
    worker = ProviderWorker(SandboxAdapter(), shared, WorkerOptions())
    fetching = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)  # its fetch is under way
    worker.stop_fetching()
    await asyncio.wait_for(fetching, 10)
