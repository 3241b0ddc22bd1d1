"""Following a NATS KV bucket: its current entries first, then every change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue


def removed(entry: KeyValue.Entry) -> bool:
    """True for a deletion or purge (the key is gone)."""
    return entry.operation in (KV_DEL, KV_PURGE) or not entry.value


async def follow(kv: KeyValue, apply: Callable[[KeyValue.Entry], None]) -> asyncio.Task[None]:
    """Apply every entry the bucket holds now, then return a task that applies each change
    as it comes; cancel the task to stop."""
    watcher = await kv.watchall()
    loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run() -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    # The end of what the bucket held when the watch began.
                    if not loaded.done():
                        loaded.set_result(None)
                    continue
                apply(entry)
        finally:
            if not loaded.done():
                loaded.set_result(None)
            with contextlib.suppress(Exception):
                await watcher.stop()

    task = asyncio.create_task(run())
    try:
        await loaded
    except BaseException:
        # Cancelled while loading: the caller never gets the task to cancel it.
        task.cancel()
        raise
    return task
