"""Which tenant a call belongs to. Every read and write is scoped by it."""

from __future__ import annotations

import grpc

TENANT_HEADER = "x-genmesh-tenant"
DEFAULT_TENANT = "default"


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's tenant from request metadata; the default tenant in embedded mode."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_HEADER and isinstance(value, str) and value:
            return value
    return DEFAULT_TENANT


def tenant_metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    """Metadata that makes an outgoing call act for `tenant`."""
    return ((TENANT_HEADER, tenant),)
