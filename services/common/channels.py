"""One way to open a gRPC channel to another mesh service, and to bound one step of a call."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Awaitable
from typing import Literal, NamedTuple, TypeVar

import grpc

from services.common.grpc_server import MAX_MESSAGE_BYTES

T = TypeVar("T")


def mesh_channel(address: str) -> grpc.aio.Channel:
    """An insecure channel to a mesh service (loopback or a trusted network), spreading calls
    over every replica `address` names (see grpc_target); ValueError for a bad list."""
    return grpc.aio.insecure_channel(
        grpc_target(address),
        options=[
            # Every address the target resolves to gets calls in turn, and one that is down
            # is skipped: pick_first, gRPC's default, sends all to the first that answers.
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Only one layer retries, and it is the caller's.
            ("grpc.enable_retries", 0),
            # An inherited HTTP(S)_PROXY must not reroute calls to the mesh (often loopback).
            ("grpc.enable_http_proxy", 0),
            # A restarted service is found within two seconds: gRPC's own backoff grows to two
            # minutes, which after a long outage outlasts a caller's retries (a worker gives
            # storage 30 s) while the service is long back.
            ("grpc.max_reconnect_backoff_ms", 2000),
            # Likewise a name to look up again (a container that was gone, in compose).
            ("grpc.dns_min_time_between_resolutions_ms", 2000),
        ],
    )


# Target URI schemes gRPC resolves itself; anything else is a host:port (or a list of them).
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
# scheme://…: a target URI for a resolver gRPC (or a plug-in) knows.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Without a port gRPC calls port 443 (its default for a name), where no mesh service listens:
# every call then fails UNAVAILABLE, long after start-up, and the error names neither.
_NO_PORT = "needs a port, e.g. 127.0.0.1:50052 (without one gRPC calls port 443)"


def grpc_target(address: str) -> str:
    """The gRPC target for an address setting. One host:port or gRPC target URI is used as it
    is (a DNS name resolving to several replicas, e.g. dns:///router:50051, reaches them all);
    several IP:port, comma-separated, become one static list of replicas. ValueError for what
    gRPC cannot take, or would take as another address."""
    address = address.strip()
    if address.startswith(("ipv4:", "ipv6:")):
        scheme, _, listed = address.partition(":")
        entries = listed.split(",")
        if any(not _has_port(entry) for entry in entries):
            raise ValueError(_NO_PORT)
        _static_list(entries, scheme)
        return address
    if address.startswith("dns:"):
        # dns:host:port, dns:///host:port or dns://authority/host:port.
        name = address.removeprefix("dns:")
        _host_port(name.split("/", 3)[-1] if name.startswith("//") else name)
        return address
    if address.startswith(_SCHEMES) or _URI.match(address):
        # Another resolver's URI (passthrough:///, xds:///, a custom one): gRPC's to read.
        return address
    parts = [part.strip() for part in address.split(",")]
    if len(parts) == 1:
        if not address:
            raise ValueError("no address: give host:port, e.g. 127.0.0.1:50051")
        _host_port(address)
        return address
    return f"{_static_list(parts)}:{','.join(parts)}"


class _Split(NamedTuple):
    """host:port taken apart at its last colon, the one parse every check here reads."""

    host: str
    # None: no port at all (no colon, or a bracketed IPv6 host alone); "": none after the colon.
    port: str | None

    @property
    def number(self) -> int | None:
        """The port, if it is one gRPC calls as written: past 65535 it calls that less 65536."""
        if self.port is None or not self.port.isdigit() or not 0 < int(self.port) < 65536:
            return None
        return int(self.port)


def _split(address: str) -> _Split:
    host, sep, port = address.rpartition(":")
    if not sep or address.endswith("]"):
        return _Split(address, None)
    return _Split(host, port)


def _has_port(entry: str) -> bool:
    return bool(_split(entry.strip()).port)


def _host_port(address: str) -> None:
    """ValueError unless `address` is host:port, an IPv6 host in brackets."""
    host, port = split = _split(address)
    if port is None:
        raise ValueError(_NO_PORT)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        # gRPC takes all of an unbracketed IPv6 address as the host, and calls its port 443.
        raise ValueError("an IPv6 address goes in brackets, then its port, e.g. [::1]:50052")
    if not port:
        raise ValueError(_NO_PORT)
    if not host:
        raise ValueError("needs a host before the port, e.g. 127.0.0.1:50052")
    if split.number is None:
        raise ValueError("the port must be 1 to 65535")


def _static_list(parts: list[str], scheme: str | None = None) -> str:
    """The family ("ipv4" or "ipv6") of a static list of IP:port; ValueError unless every
    entry is one, of the same family (`scheme`'s, when the list came with one)."""
    families = {_family(part) for part in parts}
    if len(families) != 1 or None in families or scheme not in (None, *families):
        raise ValueError(
            "a list of addresses takes IP:port entries of one family, e.g. "
            "127.0.0.1:50051,127.0.0.1:50061; for host names, give one DNS name that resolves "
            "to every replica, e.g. dns:///NAME:PORT"
        )
    return str(families.pop())


def _family(part: str) -> Literal["ipv4", "ipv6"] | None:
    split = _split(part)
    if split.number is None:
        return None
    try:
        ip = ipaddress.ip_address(split.host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if ip.version == 6:
        # gRPC's ipv6 lists take bracketed hosts, as in a URL.
        return "ipv6" if split.host.startswith("[") else None
    return "ipv4"


async def within(call: grpc.aio.Call, step: Awaitable[T], seconds: float | None, peer: str) -> T:
    """One step of a streaming call (a message read or written, the answer) within `seconds`;
    past them the call is cancelled and the error is the DEADLINE_EXCEEDED a unary call with
    that deadline would have met. A stream's total time stays unbounded, as it must."""
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await step
    except TimeoutError:
        if not deadline.expired():
            raise
        call.cancel()
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=f"{peer} did not answer within {seconds:g} s",
        ) from None
