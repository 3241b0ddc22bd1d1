"""One way to open a gRPC channel to another mesh service."""

from __future__ import annotations

import grpc

from services.common.grpc_server import MAX_MESSAGE_BYTES


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
        ],
    )
