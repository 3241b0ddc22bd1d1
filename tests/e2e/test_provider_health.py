"""Provider health reflects how the provider's recent calls went."""

from __future__ import annotations

import pytest

from genmesh.v1 import job_pb2, provider_service_pb2
from services.providers import registration
from tests.e2e.test_job_flow import spec, submit
from tests.infra import eventually
from tests.mesh import Mesh


@pytest.fixture(autouse=True)
def frequent_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker (started after this) says how its calls went every half second rather than
    every five, so the test need not wait for its next word."""
    monkeypatch.setattr(registration, "INTERVAL", 0.5)


async def test_recent_failures_degrade_the_provider(mesh: Mesh) -> None:
    jobs = [
        await submit(mesh, spec(latency_ms=0, steps=0, fail_rate=1.0, fail_kind="fatal", seed=i))
        for i in range(6)
    ]
    for job in jobs:
        assert (await mesh.watch(job.id))[-1].state == job_pb2.JOB_STATE_FAILED

    async def degraded() -> provider_service_pb2.Provider | None:
        reply = await mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
        sandbox = next(p for p in reply.providers if p.name == "sandbox")
        return sandbox if sandbox.health.recent_calls >= 6 else None

    sandbox = await eventually(degraded, within=15.0)
    assert sandbox.health.recent_error_rate == 1.0
    assert sandbox.health.status == provider_service_pb2.PROVIDER_STATUS_DEGRADED
    assert "100% of the last 6 calls failed" in sandbox.health.reason
