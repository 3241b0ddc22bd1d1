"""tests.infra.reserved_port: a port that servers of a test can leave and come back to while
no other process can take it."""

from __future__ import annotations

import errno
import socket

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.common.grpc_server import grpc_server
from tests.fakes.server import serving
from tests.infra import reserved_port


async def _hello(_: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/", _hello)])


def _bind_as_another_process_would(port: int) -> None:
    # uvicorn, and most servers, bind with SO_REUSEADDR.
    with socket.socket() as thief:
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        thief.bind(("127.0.0.1", port))
        thief.listen()


async def test_servers_come_back_on_a_reserved_port_and_nobody_else_takes_it() -> None:
    with reserved_port() as port:
        for _ in range(3):
            async with (
                serving(APP, port) as url,
                httpx.AsyncClient(base_url=url, trust_env=False) as http,
            ):
                assert url == f"http://127.0.0.1:{port}"
                assert (await http.get("/")).text == "hello"
            # Between servers: refused, as with no server at all, and not to be taken.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            with pytest.raises(OSError) as taken:
                _bind_as_another_process_would(port)
            assert taken.value.errno == errno.EADDRINUSE
    # Released at the end of the block.
    _bind_as_another_process_would(port)


async def test_any_server_comes_back_on_a_port_held_for_any_server() -> None:
    # The services' gRPC server sets SO_REUSEADDR and not SO_REUSEPORT, as nats-server and
    # uvicorn do.
    with reserved_port(any_server=True) as port:
        address = f"127.0.0.1:{port}"
        for _ in range(3):
            async with (
                grpc_server(address, [], grace=0),
                grpc.aio.insecure_channel(address) as channel,
            ):
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            # In use to the kernel: a socket that asks for no sharing cannot have it.
            with socket.socket() as plain, pytest.raises(OSError) as taken:
                plain.bind(("127.0.0.1", port))
            assert taken.value.errno == errno.EADDRINUSE
