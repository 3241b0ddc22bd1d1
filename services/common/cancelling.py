"""Stopping background tasks: cancel, and make sure they end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# Seconds a cancelled task may keep running before it is cancelled again.
RECANCEL_AFTER = 0.5


async def cancel_task(task: asyncio.Future[Any] | None) -> None:
    """Stop a background task (if there is one) and wait until it has."""
    await cancel_tasks([task])


async def cancel_tasks(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Stop background tasks (None: not started) and wait until each has ended; an error
    one ends with while stopping is logged (a task already done is left to its owner). The
    caller's own cancellation is not swallowed.

    A task can miss a cancellation: on CPython 3.11, `asyncio.wait_for` returns its result
    instead of raising when the cancellation arrives in the same loop pass as that result,
    and the task carries on. Our code waits with `asyncio.timeout` instead, but libraries
    still use wait_for (nats-py in request, flush and next_msg, among others), so a task
    still running after RECANCEL_AFTER is cancelled again."""
    stopping = [task for task in tasks if task is not None and not task.done()]
    pending = set(stopping)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
    for task in stopping:
        if task.cancelled():
            continue
        error = task.exception()
        # A gather() future cancelled while its children run ends with CancelledError as
        # its exception rather than cancelled (CPython 3.11): stopped as asked all the same.
        if error is not None and not isinstance(error, asyncio.CancelledError):
            log.warning("a task failed as it was stopped", exc_info=error)
