"""The gRPC clients the bridge holds for its lifetime, and the dependencies that reach them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, TypedDict

import grpc
from fastapi import Depends, Header
from starlette.requests import HTTPConnection

from gateway.settings import Settings
from genmesh.v1 import (
    generate_service_pb2_grpc,
    job_service_pb2_grpc,
    provider_service_pb2_grpc,
)
from services.common.tenancy import DEFAULT_TENANT, TENANT_HEADER, tenant_metadata
from services.storage.client import AssetClient

# Deadline for unary calls; streams (watch, download) run as long as the client stays.
RPC_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Clients:
    generate: generate_service_pb2_grpc.GenerateServiceStub
    jobs: job_service_pb2_grpc.JobServiceStub
    providers: provider_service_pb2_grpc.ProviderServiceStub
    assets: AssetClient


class State(TypedDict):
    """Lifespan state; Starlette copies it into every request's `state`."""

    clients: Clients


def _channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Only one layer retries, and it is the caller's: the bridge maps errors and stops.
            ("grpc.enable_retries", 0),
            # An inherited HTTP(S)_PROXY must not reroute calls to the mesh.
            ("grpc.enable_http_proxy", 0),
        ],
    )


@asynccontextmanager
async def open_clients(settings: Settings) -> AsyncIterator[Clients]:
    """Channels to the router and storage, closed on exit (in-flight calls are cancelled)."""
    async with AsyncExitStack() as stack:
        router = await stack.enter_async_context(_channel(settings.router_addr))
        storage = await stack.enter_async_context(_channel(settings.storage_addr))
        yield Clients(
            generate=generate_service_pb2_grpc.GenerateServiceStub(router),
            jobs=job_service_pb2_grpc.JobServiceStub(router),
            providers=provider_service_pb2_grpc.ProviderServiceStub(router),
            assets=AssetClient(storage, timeout=None),
        )


def _clients(conn: HTTPConnection) -> Clients:
    clients = conn.state.clients
    assert isinstance(clients, Clients)
    return clients


def _tenant(
    x_genmesh_tenant: Annotated[str, Header(alias=TENANT_HEADER)] = "",
) -> str:
    return x_genmesh_tenant or DEFAULT_TENANT


ClientsDep = Annotated[Clients, Depends(_clients)]
TenantDep = Annotated[str, Depends(_tenant)]


def metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    return tenant_metadata(tenant)
