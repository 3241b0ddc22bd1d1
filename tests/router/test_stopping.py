"""WorkerStopper while NATS is out of reach: callers are not failed, and workers are told
once NATS answers, once per job, by one task."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import nats.errors
import pytest

from genmesh.v1 import bus_pb2
from services.common.bus import Bus
from services.router import stopping
from services.router.stopping import WorkerStopper


class Nats:
    """A KV bucket and a connection that fail while `down`, storing and sending nothing."""

    def __init__(self) -> None:
        self.down = False
        self.puts: list[str] = []
        self.broadcasts: list[str] = []
        self.tries = 0

    async def put(self, key: str, value: bytes) -> int:
        self.tries += 1
        if self.down:
            raise nats.errors.TimeoutError
        self.puts.append(key)
        return len(self.puts)

    async def publish(self, subject: str, payload: bytes) -> None:
        self.broadcasts.append(bus_pb2.CancelRequest.FromString(payload).job_id)


def stopper(fake: Nats) -> WorkerStopper:
    return WorkerStopper(cast(Any, fake), Bus("t"), cast(Any, fake))


async def test_stops_nats_cannot_take_wait_in_one_queue_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stopping, "RETRY_FIRST", 0.05)
    fake = Nats()
    workers = stopper(fake)
    fake.down = True
    await workers.stop("j1", "cancelled")  # tried, failed: queued, not raised
    assert fake.tries == 1
    await workers.stop("j2", "cancelled")  # joins the queue without a try of its own
    await workers.stop("j1", "cancelled again")  # the same job once
    assert fake.tries == 1
    await asyncio.sleep(0.3)
    assert fake.puts == [] and fake.tries > 1  # retried, still down
    fake.down = False
    for _ in range(100):
        if fake.puts:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert sorted(fake.puts) == ["j1", "j2"]
    assert sorted(fake.broadcasts) == ["j1", "j2"]
    # Back to telling at once.
    await workers.stop("j3", "cancelled")
    assert fake.puts[-1] == "j3"
    await workers.close()


async def test_a_caller_gone_mid_try_still_has_the_workers_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stopping, "RETRY_FIRST", 0.05)
    fake = Nats()
    trying = asyncio.Event()

    async def stalled(key: str, value: bytes) -> int:
        trying.set()
        await asyncio.Event().wait()  # NATS stalled: no answer
        return 0

    workers = stopper(fake)
    fake.put = stalled  # type: ignore[method-assign]
    caller = asyncio.create_task(workers.stop("j1", "cancelled"))
    await trying.wait()
    caller.cancel()  # e.g. the CancelJob call's deadline
    with pytest.raises(asyncio.CancelledError):
        await caller
    del fake.put  # NATS answers again
    for _ in range(100):
        if fake.puts:
            break
        await asyncio.sleep(0.05)
    assert fake.puts == ["j1"] and fake.broadcasts == ["j1"]
    await workers.close()


async def test_close_gives_up_what_waits() -> None:
    fake = Nats()
    workers = stopper(fake)
    fake.down = True
    await workers.stop("j1", "cancelled")
    await workers.close()
    fake.down = False
    await asyncio.sleep(stopping.RETRY_FIRST + 0.2)
    assert fake.puts == []
