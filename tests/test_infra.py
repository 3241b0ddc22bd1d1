"""Where the tests find PostgreSQL: a set URL, the local server, else a container."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import tests.infra
from tests.infra import docker_engine_answers, free_port, postgres_server


class _Engine(socketserver.StreamRequestHandler):
    """Answers every request the way a Docker engine answers GET /_ping."""

    def handle(self) -> None:
        server: Any = self.server
        server.requests.append(self.rfile.readline().decode().strip())
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        status, body = server.reply
        self.wfile.write(f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())


class _TcpEngine(socketserver.ThreadingTCPServer):
    daemon_threads = True
    requests: list[str]
    reply: tuple[str, str]


class _UnixEngine(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    requests: list[str]
    reply: tuple[str, str]


@contextmanager
def fake_engine(
    reply: tuple[str, str] = ("200 OK", "OK"), unix: Path | None = None
) -> Iterator[tuple[str, list[str]]]:
    """A stand-in Docker engine on loopback (or a unix socket): its DOCKER_HOST and the
    request lines it received."""
    server: _TcpEngine | _UnixEngine
    if unix is None:
        server = _TcpEngine(("127.0.0.1", 0), _Engine)
        host = f"tcp://127.0.0.1:{server.server_address[1]}"
    else:
        server = _UnixEngine(str(unix), _Engine)
        host = f"unix://{unix}"
    server.requests, server.reply = [], reply
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host, server.requests
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def listening() -> Iterator[int]:
    """A port something listens on, as a local PostgreSQL would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(autouse=True)
def no_set_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENMESH_TEST_POSTGRES_URL", raising=False)


def test_the_probe_pings_an_engine_over_tcp_and_over_a_unix_socket(tmp_path: Path) -> None:
    with fake_engine() as (host, requests):
        assert docker_engine_answers(host)
    assert requests == ["GET /_ping HTTP/1.0"]
    with fake_engine(unix=tmp_path / "docker.sock") as (host, _):
        assert docker_engine_answers(host)


def test_the_probe_says_no_without_an_engine_that_answers_ok(tmp_path: Path) -> None:
    assert not docker_engine_answers(f"tcp://127.0.0.1:{free_port()}")
    assert not docker_engine_answers(f"unix://{tmp_path / 'missing.sock'}")
    assert not docker_engine_answers("ssh://user@host")
    with fake_engine(("500 Internal Server Error", "down")) as (host, _):
        assert not docker_engine_answers(host)


def test_a_set_url_wins_and_docker_is_not_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_engine() as (host, requests):
        monkeypatch.setenv("DOCKER_HOST", host)
        monkeypatch.setenv("GENMESH_TEST_POSTGRES_URL", "postgresql+asyncpg://u@db:6543/x")
        with postgres_server(local_port=free_port()) as url:
            assert url == "postgresql+asyncpg://u@db:6543/x"
    assert requests == []


def test_the_local_server_comes_before_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_engine() as (host, requests), listening() as port:
        monkeypatch.setenv("DOCKER_HOST", host)
        with postgres_server(local_port=port) as url:
            assert url == f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test"
    assert requests == []


def test_without_a_server_or_an_engine_postgres_tests_skip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    with postgres_server(local_port=free_port()) as url:
        assert url is None


class _Container:
    """Stands in for testcontainers' PostgresContainer: no engine runs here to start one."""

    made: list[_Container] = []

    def __init__(self, image: str, driver: str) -> None:
        self.image, self.driver, self.running = image, driver, False
        self.made.append(self)

    def __enter__(self) -> _Container:
        self.running = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.running = False

    def get_connection_url(self) -> str:
        return f"postgresql+{self.driver}://test:test@127.0.0.1:32768/test"


def test_with_only_an_engine_a_container_serves_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import testcontainers.community.postgres as containers

    monkeypatch.setattr(containers, "PostgresContainer", _Container)
    with fake_engine() as (host, requests):
        monkeypatch.setenv("DOCKER_HOST", host)
        with postgres_server(local_port=free_port()) as url:
            [container] = _Container.made
            assert container.running
            assert container.image == tests.infra.POSTGRES_IMAGE
            assert url == "postgresql+asyncpg://test:test@127.0.0.1:32768/test"
        assert not container.running
    assert requests == ["GET /_ping HTTP/1.0"]
