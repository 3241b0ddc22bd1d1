"""Group commit: concurrent writers share one transaction instead of paying one each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.exc import IntegrityError

T = TypeVar("T")


@dataclass(frozen=True)
class _Pending(Generic[T]):
    item: T
    done: asyncio.Future[None]


class GroupCommit(Generic[T]):
    """While one batch is being written the next accumulates, so a busy service pays one
    commit per batch, not per item. `write` stores a batch in one transaction.

    A batch that breaks a constraint is written again item by item, so only the item at
    fault gets the IntegrityError; any other error fails the whole batch."""

    def __init__(self, write: Callable[[Sequence[T]], Awaitable[None]]) -> None:
        self._write = write
        self._pending: list[_Pending[T]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Return once `item` is durably written; raise what writing it raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write([p.item for p in batch])
            except IntegrityError as exc:
                if len(batch) == 1:
                    _settle(batch[0], exc)
                    continue
                for pending in batch:
                    await self._alone(pending)
            except BaseException as exc:
                for pending in batch:
                    _settle(pending, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                for pending in batch:
                    _settle(pending, None)

    async def _alone(self, pending: _Pending[T]) -> None:
        try:
            await self._write([pending.item])
        except Exception as exc:
            _settle(pending, exc)
        else:
            _settle(pending, None)


def _settle(pending: _Pending[T], exc: BaseException | None) -> None:
    if pending.done.done():
        return
    if exc is None:
        pending.done.set_result(None)
    else:
        pending.done.set_exception(exc)
