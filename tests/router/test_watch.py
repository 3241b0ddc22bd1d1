"""A watcher's inbox: waiting for the next event stays cancellable."""

from __future__ import annotations

import asyncio

from genmesh.v1 import job_pb2
from services.router.watch import Listener


async def test_a_cancel_that_meets_an_arriving_event_still_cancels_the_wait() -> None:
    # The event and the cancellation land in one loop pass: CPython 3.11's wait_for
    # returned the event here and the watcher carried on as if never cancelled.
    listener = Listener()
    waiting = asyncio.create_task(listener.next(60))
    await asyncio.sleep(0.01)
    listener.offer(job_pb2.JobEvent(sequence=1))
    waiting.cancel()
    await asyncio.wait([waiting], timeout=10)
    assert waiting.cancelled()
    # Nothing is lost: the event is still there for the next wait.
    assert listener.queue.qsize() == 1
