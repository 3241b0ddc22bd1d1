"""Real infrastructure for tests: a NATS server with JetStream and a database per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from genmesh_cli.supervisor import nats_server_binary

# The local services on a machine of this kind; override to point elsewhere.
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def private_nats_server() -> Iterator[str]:
    """A throwaway `nats-server -js` on a free port with a temporary store."""
    port = free_port()
    store = tempfile.mkdtemp(prefix="genmesh-nats-")
    proc = subprocess.Popen(
        [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("private nats-server did not start")
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(store, ignore_errors=True)


def env_nats_url() -> str | None:
    """GENMESH_TEST_NATS_URL, or the local server when one listens on 4222."""
    url = os.environ.get("GENMESH_TEST_NATS_URL")
    if url:
        return url
    return DEFAULT_NATS_URL if reachable("127.0.0.1", 4222) else None


def env_postgres_url() -> str | None:
    """GENMESH_TEST_POSTGRES_URL, or the local server when one listens on 5432."""
    url = os.environ.get("GENMESH_TEST_POSTGRES_URL")
    if url:
        return url
    return DEFAULT_POSTGRES_URL if reachable("127.0.0.1", 5432) else None


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def eventually(
    predicate: Callable[[], Any], within: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll a sync or async predicate until it returns something truthy; fail after `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
