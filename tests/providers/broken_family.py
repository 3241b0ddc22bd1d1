"""`python -m tests.providers.broken_family`: the worker, knowing one more adapter family,
"broken", whose factory fails as a bug would (a ValueError no adapter means as a refusal)."""

from __future__ import annotations

from services.providers import registry
from services.providers.__main__ import main
from services.providers.config import ProviderConfig


def broken(config: ProviderConfig) -> None:
    int(config.name)  # the bug: a name is not a number


if __name__ == "__main__":
    registry.FAMILIES["broken"] = "tests.providers.broken_family:broken"
    main()
