"""Stopping background tasks: cancelled until they end, errors logged, callers cancellable."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common.cancelling import cancel_task, cancel_tasks


async def _ignores_one_cancellation(ignored: list[int]) -> None:
    # What CPython 3.11's wait_for does when a result and the cancellation meet.
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        ignored.append(1)
    await asyncio.sleep(60)


async def test_a_task_that_missed_its_cancellation_is_cancelled_again() -> None:
    ignored: list[int] = []
    task = asyncio.create_task(_ignores_one_cancellation(ignored))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_task(task), 10)
    assert ignored == [1]
    assert task.cancelled()


async def test_cancel_tasks_stops_every_task_and_tolerates_none_and_finished() -> None:
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    sleepers = [asyncio.create_task(asyncio.sleep(60)) for _ in range(3)]
    await cancel_tasks([finished, *sleepers])
    await cancel_task(None)
    assert all(t.cancelled() for t in sleepers)


async def test_an_error_a_task_ends_with_while_stopping_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("broken clean-up") from None

    task = asyncio.create_task(fails_when_cancelled())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="services.common.cancelling"):
        await cancel_task(task)
    assert "broken clean-up" in caplog.text


async def test_a_task_already_done_is_left_to_its_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("its owner reads this")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="services.common.cancelling"):
        await cancel_task(task)
    assert caplog.text == ""
    with pytest.raises(RuntimeError, match="its owner reads this"):
        task.result()


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    ignored: list[int] = []
    stubborn = asyncio.create_task(_ignores_one_cancellation(ignored))
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_task(stubborn))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    stubborn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stubborn


async def test_a_cancelled_gather_is_not_reported_as_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A cancelled gather() ends with CancelledError as its exception, not as cancelled.
    gathered = asyncio.ensure_future(asyncio.gather(asyncio.sleep(60), asyncio.sleep(60)))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="services.common.cancelling"):
        await cancel_task(gathered)
    assert gathered.done()
    assert caplog.text == ""
