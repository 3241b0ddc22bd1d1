"""The one backoff the mesh's retry loops share: a first wait, doubling, up to a most; and
the loop that retries one call with it for a while."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def doubling(failures: int, first: float, most: float) -> float:
    """Seconds to wait after `failures` failed tries in a row: 0 after none, `first` after
    one, twice as long after each more, never over `most`."""
    if failures <= 0:
        return 0.0
    return min(most, first * 2 ** min(failures - 1, 30))


async def patiently(
    call: Callable[[], Awaitable[T]],
    again: Callable[[Exception], bool],
    *,
    patience: float,
    first: float,
    most: float,
) -> T:
    """`call()`, tried again after doubling waits while `again(error)` says the error may
    pass, for at most `patience` seconds; then, or for any other error, the error is raised."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience
    failures = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            failures += 1
            delay = doubling(failures, first, most)
            if not again(exc) or loop.time() + delay > give_up:
                raise
        await asyncio.sleep(delay)
