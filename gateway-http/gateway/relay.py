"""A bounded buffer between a mesh stream and one slow client.

The mesh stream is read as fast as it produces, into at most `limit` waiting messages, so a
browser that reads slowly (or not at all) holds up only its own connection. When the buffer
overflows, the mesh call is cancelled, the backlog is dropped and the client is told it fell
behind; it resumes from the last sequence (or cursor) it received, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from services.common.cancelling import cancel_task

T = TypeVar("T")


class FellBehind(Exception):
    """The client read more slowly than the stream produced, past the buffer's limit."""


class _End:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Lagged:
    pass


class ReadAhead(Generic[T]):
    """Iterates `source` through a buffer of `limit` items; raises FellBehind on overflow and
    re-raises what `source` raised. Once `until` is set, reading stops and the iteration ends
    as if `source` had (after what is already buffered). Use as an async context manager so
    the reader stops."""

    def __init__(
        self, source: AsyncIterator[T], limit: int, until: asyncio.Event | None = None
    ) -> None:
        self._source = source
        self._limit = limit
        self._until = until
        self._queue: asyncio.Queue[T | _End | _Failed | _Lagged] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReadAhead[T]:
        self._task = asyncio.create_task(self._read())
        if self._until is not None:
            self._stopper = asyncio.create_task(self._end_when(self._until))
        return self

    async def __aexit__(self, *_: object) -> None:
        await cancel_task(self._stopper)
        await cancel_task(self._task)

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Lagged):
                raise FellBehind
            if isinstance(item, _Failed):
                raise item.error
            yield item

    async def _end_when(self, until: asyncio.Event) -> None:
        await until.wait()
        assert self._task is not None
        self._task.cancel()  # its `finally` ends the mesh call
        self._queue.put_nowait(_End())

    async def _read(self) -> None:
        try:
            async for item in self._source:
                if self._queue.qsize() >= self._limit:
                    while not self._queue.empty():
                        self._queue.get_nowait()
                    self._queue.put_nowait(_Lagged())
                    return
                self._queue.put_nowait(item)
            self._queue.put_nowait(_End())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._queue.put_nowait(_Failed(exc))
        finally:
            # Closing the source ends its mesh call now rather than at garbage collection.
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
