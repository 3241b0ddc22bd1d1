"""Child processes that die with the job that started them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator


def find_binary(name: str) -> str | None:
    """The executable `name` (a bare name looked up on PATH, or a path), or None."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


@contextlib.asynccontextmanager
async def child(*argv: str, stdin: bool = False) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start `argv` with stdout and stderr piped; on leaving, kill it if it is still running.

    Leaving early (a cancelled job, an error while reading it) must not leave the process
    burning a core for output nobody will read."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # One JSON line may carry a long transcript.
        limit=1 << 20,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        # Shielded: reaping must finish even when we are here because the job was cancelled.
        await asyncio.shield(_reap(process))


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Close stdin, read both pipes to their end and wait: no transport is left open."""
    if process.stdin is not None:
        process.stdin.close()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.read()
    await process.wait()
