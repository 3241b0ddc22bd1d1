"""The entry-point loop every service shares: run until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any


async def serve_until_signalled(start: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
    """Enter `start()`, wait for a stop signal, then leave it (which shuts down cleanly)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with start():
        await stop.wait()
