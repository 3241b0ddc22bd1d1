"""One way to open a gRPC channel to another mesh service, and to bound one step of a call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from services.common.grpc_server import MAX_MESSAGE_BYTES

T = TypeVar("T")


def mesh_channel(address: str) -> grpc.aio.Channel:
    """An insecure channel to a mesh service (loopback or a trusted network)."""
    return grpc.aio.insecure_channel(
        address,
        options=[
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
