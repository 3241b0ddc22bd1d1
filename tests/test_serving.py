"""tests.fakes.server.serving: the connections it accepts send each write at once."""

from __future__ import annotations

import gc
import socket

import httpx

from tests.fakes.server import serving
from tests.test_reserved_port import APP


def _accepted(peer: tuple[str, int]) -> socket.socket:
    """The server's end of the connection from `peer` (held by its asyncio transport)."""
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket) and obj.fileno() != -1:
            try:
                if obj.getpeername() == peer:
                    return obj
            except OSError:
                continue
    raise AssertionError(f"no accepted socket for {peer}")


async def test_accepted_connections_do_not_wait_to_coalesce_small_writes() -> None:
    # With Nagle's algorithm on, a response's body (written after its headers) waited for
    # the client's delayed ACK: 40 ms a request. asyncio sets TCP_NODELAY only on sockets
    # whose protocol is IPPROTO_TCP by number.
    async with serving(APP) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            # A request through the same server first, so the connection above is accepted.
            async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
                assert (await http.get("/")).text == "hello"
            accepted = _accepted(client.getsockname())
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
