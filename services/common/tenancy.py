"""Which tenant a call belongs to. Every read and write is scoped by it."""

from __future__ import annotations

import re

import grpc

from services.common.errors import InvalidArgument

TENANT_HEADER = "x-genmesh-tenant"
DEFAULT_TENANT = "default"
# The narrowest tenant column any service stores (the router's jobs table).
MAX_TENANT = 64
_NAME = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_TENANT - 1}}}"
# What every service and the bridge accept as a tenant name (matched whole: "$" alone
# would also pass a trailing newline).
TENANT_PATTERN = rf"^{_NAME}$"
# What the header (HTTP) or metadata value (gRPC) may hold: a name, or nothing for the
# default tenant, as if it were absent.
TENANT_HEADER_PATTERN = rf"^(?:{_NAME})?$"
_TENANT = re.compile(TENANT_PATTERN)


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's tenant from request metadata; the default tenant in embedded mode.
    InvalidArgument for a name outside TENANT_PATTERN."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_HEADER and isinstance(value, str) and value:
            if not _TENANT.fullmatch(value):
                raise InvalidArgument(
                    f"{TENANT_HEADER} must be 1 to {MAX_TENANT} letters, digits, '.', '_' or "
                    "'-', starting with a letter or digit"
                )
            return value
    return DEFAULT_TENANT


def tenant_metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    """Metadata that makes an outgoing call act for `tenant`."""
    return ((TENANT_HEADER, tenant),)
