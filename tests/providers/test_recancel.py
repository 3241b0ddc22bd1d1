"""A cancelled job's clean-up survives a second cancellation, as cancel_tasks sends one to a
task still running after RECANCEL_AFTER: the provider call stays bounded, and the job's
message still goes back to JetStream at once (real JetStream here)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from genmesh.v1 import bus_pb2, job_pb2
from services.common.pulling import PullConsumer
from services.providers.base import cancel_remote
from services.providers.runtime import ProviderWorker, Shared, WorkerOptions
from services.providers.sandbox.adapter import SandboxAdapter
from tests.infra import eventually

# Far beyond any wait below: a job redelivered only after ack_wait would fail the test.
ACK_WAIT = 30.0


async def test_a_provider_cancel_stays_bounded_when_its_caller_is_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ended = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.set()

    async def job() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await cancel_remote("job-1", hangs, within=1.0)
            raise

    task = asyncio.create_task(job())
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="services.providers.base"):
        task.cancel()
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait([task], timeout=10)
        assert task.cancelled()
        # The caller stopped waiting, yet the provider call runs on until its own bound,
        # and reports running out of time though nobody waits for it any more.
        assert not ended.is_set()
        async with asyncio.timeout(10):
            await ended.wait()
        await eventually(lambda: caplog.records)
    reported = [r.exc_info[0] for r in caplog.records if r.exc_info]
    assert reported == [TimeoutError]


async def test_a_stopped_job_cancelled_again_during_its_nak_is_redelivered_at_once(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    naked: list[int] = []
    nak = Msg.nak

    async def nak_cancelled_again(msg: Msg, delay: float | None = None) -> None:
        # The second cancellation arrives as the clean-up's nak starts.
        naked.append(msg.metadata.sequence.stream)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await nak(msg, delay)

    monkeypatch.setattr(Msg, "nak", nak_cancelled_again)
    adapter = SandboxAdapter()
    worker = ProviderWorker(
        adapter, shared, WorkerOptions(ack_wait=ACK_WAIT, drain_timeout=0.1, event_linger=0)
    )
    fetching = asyncio.create_task(worker.run())
    job = job_pb2.Job(id="job-1", tenant_id="default", provider=adapter.name)
    job.spec.task = job_pb2.TASK_TEXT_TO_TEXT
    job.spec.prompt = "never finishes"
    job.spec.parameters.update({"latency_ms": 600_000})
    subject = shared.bus.jobs_subject(adapter.name)
    await shared.js.publish(subject, bus_pb2.JobDispatch(job=job, attempt=1).SerializeToString())
    await eventually(lambda: worker.in_flight == 1, within=10)
    worker.stop_fetching()
    await asyncio.wait([fetching], timeout=10)

    # Stopping the worker: the job is cancelled, and cancelled again inside its nak.
    await worker.drain()
    assert len(naked) == 1

    pull = PullConsumer(
        shared.nc, shared.js, shared.bus.jobs_stream, shared.bus.worker_consumer(adapter.name)
    )
    await pull.start(subject, ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT))
    try:
        # Matched by stream sequence, not num_delivered: nats-server 2.15 now and then
        # numbers a nakked message's redelivery 1 again.
        redelivered = await pull.fetch(1, wait=10)
        assert [m.metadata.sequence.stream for m in redelivered] == naked
        await redelivered[0].ack()
    finally:
        await pull.close()
