"""The gRPC clients the bridge holds for its lifetime, and the dependencies that reach them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, TypedDict

from fastapi import Depends, Header
from starlette.requests import HTTPConnection

from gateway.settings import Settings
from gateway.stopping import LiveStreams
from genmesh.v1 import (
    generate_service_pb2_grpc,
    job_service_pb2_grpc,
    provider_service_pb2_grpc,
)
from services.common.channels import mesh_channel
from services.common.tenancy import (
    DEFAULT_TENANT,
    TENANT_HEADER,
    TENANT_HEADER_PATTERN,
    tenant_metadata,
)
from services.storage.client import AssetClient


@dataclass(frozen=True)
class Clients:
    generate: generate_service_pb2_grpc.GenerateServiceStub
    jobs: job_service_pb2_grpc.JobServiceStub
    providers: provider_service_pb2_grpc.ProviderServiceStub
    assets: AssetClient
    # Deadline of a unary router call, and of a router stream's first message
    # (Settings.router_timeout); streams (watch, download) run as long as the client stays.
    router_timeout: float
    # Messages a live connection may buffer for a slow client (Settings.stream_buffer).
    stream_buffer: int
    # Seconds a live stream keeps re-opening its call across a lost router
    # (Settings.stream_resume_window; gateway.resuming).
    resume_window: float
    # The largest upload the bridge passes on (Settings.storage_max_upload_bytes).
    max_upload_bytes: int
    # Seconds a request body may pause (Settings.http_body_timeout).
    body_timeout: float


class State(TypedDict):
    """Lifespan state; Starlette copies it into every request's `state`."""

    clients: Clients
    streams: LiveStreams


@asynccontextmanager
async def open_clients(settings: Settings) -> AsyncIterator[Clients]:
    """Channels to the router and storage, closed on exit (in-flight calls are cancelled)."""
    async with AsyncExitStack() as stack:
        router = await stack.enter_async_context(mesh_channel(settings.router_addr))
        storage = await stack.enter_async_context(mesh_channel(settings.storage_addr))
        yield Clients(
            generate=generate_service_pb2_grpc.GenerateServiceStub(router),
            jobs=job_service_pb2_grpc.JobServiceStub(router),
            providers=provider_service_pb2_grpc.ProviderServiceStub(router),
            assets=AssetClient(storage, timeout=settings.storage_timeout),
            router_timeout=settings.router_timeout,
            stream_buffer=settings.stream_buffer,
            resume_window=settings.stream_resume_window,
            max_upload_bytes=settings.storage_max_upload_bytes,
            body_timeout=settings.http_body_timeout,
        )


def clients_of(conn: HTTPConnection) -> Clients:
    """The clients in the lifespan state of a request or WebSocket."""
    clients = conn.state.clients
    assert isinstance(clients, Clients)
    return clients


def streams_of(conn: HTTPConnection) -> LiveStreams:
    """The live streams in the lifespan state, which a stopping server tells to end."""
    streams = conn.state.streams
    assert isinstance(streams, LiveStreams)
    return streams


def _tenant(
    x_genmesh_tenant: Annotated[
        str,
        Header(
            alias=TENANT_HEADER,
            # Empty is the default tenant, as in gRPC metadata: a client that always sends
            # the header, empty when no tenant is chosen, acts for it both ways.
            pattern=TENANT_HEADER_PATTERN,
            description="The tenant to act for; absent or empty means the default tenant.",
        ),
    ] = "",
) -> str:
    return x_genmesh_tenant or DEFAULT_TENANT


ClientsDep = Annotated[Clients, Depends(clients_of)]
StreamsDep = Annotated[LiveStreams, Depends(streams_of)]
TenantDep = Annotated[str, Depends(_tenant)]


def metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    return tenant_metadata(tenant)
