"""The bounded buffer between a mesh stream and a slow client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from gateway.relay import FellBehind, ReadAhead


class Source:
    """An async stream of numbers that records how far it got and whether it was closed,
    the way a mesh call's generator cancels its call in `finally`."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.produced = 0
        self.closed = asyncio.Event()

    async def stream(self) -> AsyncIterator[int]:
        try:
            for i in range(1, self.count + 1):
                self.produced = i
                yield i
                await asyncio.sleep(0)
        finally:
            self.closed.set()


async def test_a_reader_that_keeps_up_gets_everything_in_order() -> None:
    source = Source(1000)
    async with ReadAhead(source.stream(), limit=8) as ahead:
        got = [item async for item in ahead]
    assert got == list(range(1, 1001))
    assert source.closed.is_set()


async def test_a_stalled_reader_is_cut_loose_and_told_so() -> None:
    source = Source(10_000)
    async with ReadAhead(source.stream(), limit=16) as ahead:
        items = aiter(ahead)
        assert await anext(items) == 1
        # The client stalls; the mesh stream is not held up: it is read until the buffer
        # overflows, then cancelled, long before it would have finished.
        await asyncio.wait_for(source.closed.wait(), 5)
        assert source.produced <= 1 + 16 + 1
        with pytest.raises(FellBehind):
            await anext(items)


async def test_errors_of_the_source_reach_the_reader() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise LookupError("upstream broke")

    async with ReadAhead(failing(), limit=4) as ahead:
        got = []
        with pytest.raises(LookupError, match="upstream broke"):
            async for item in ahead:
                got.append(item)
    assert got == [1]


async def test_leaving_early_closes_the_source() -> None:
    source = Source(10_000)
    async with ReadAhead(source.stream(), limit=4) as ahead:
        async for _ in ahead:
            break
    assert source.closed.is_set()


async def test_until_ends_the_iteration_and_closes_the_source() -> None:
    async def endless() -> AsyncIterator[int]:
        try:
            for i in itertools.count(1):
                yield i
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    closed = asyncio.Event()
    until = asyncio.Event()
    async with ReadAhead(endless(), limit=1000, until=until) as ahead:
        got = []
        async for item in ahead:
            got.append(item)
            if item == 3:
                until.set()  # the bridge stops: the iteration ends like a finished stream
    assert got[:3] == [1, 2, 3] and got == list(range(1, len(got) + 1))
    assert closed.is_set()
