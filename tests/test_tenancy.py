"""The tenant a gRPC call acts for, from its metadata."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from services.common.errors import InvalidArgument
from services.common.tenancy import DEFAULT_TENANT, TENANT_HEADER, tenant_of


class _Context:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def context(*metadata: tuple[str, str]) -> grpc.aio.ServicerContext[Any, Any]:
    return cast("grpc.aio.ServicerContext[Any, Any]", _Context(*metadata))


def test_the_header_names_the_tenant_and_its_absence_the_default() -> None:
    assert tenant_of(context((TENANT_HEADER, "acme.eu-1"))) == "acme.eu-1"
    assert tenant_of(context(("other", "x"))) == DEFAULT_TENANT
    assert tenant_of(context((TENANT_HEADER, ""))) == DEFAULT_TENANT


@pytest.mark.parametrize("name", ["acme\n", "a" * 65, "-acme", "ac me", "acmé"], ids=repr)
def test_a_name_outside_the_pattern_is_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument):
        tenant_of(context((TENANT_HEADER, name)))
