"""Which adapter family serves which provider instance name."""

from __future__ import annotations

from collections.abc import Callable

from services.providers.adapter import Adapter
from services.providers.sandbox import SandboxAdapter

FAMILIES: dict[str, Callable[[str], Adapter]] = {
    "sandbox": SandboxAdapter,
}


def build_adapter(name: str) -> Adapter:
    """An adapter for the instance `name`; for now an instance is named after its family."""
    family = name.split("-", 1)[0]
    factory = FAMILIES.get(family)
    if factory is None:
        raise ValueError(f"unknown provider {name!r}; known families: {', '.join(FAMILIES)}")
    return factory(name)
