"""`python -m tests.providers.broken_family`: the worker, knowing two more adapter families
with bugs, and without the Python modules UNINSTALLED names (comma-separated), as if they
were not installed. "broken"'s factory fails as a bug would (a ValueError no adapter means
as a refusal); "misspelt"'s module imports a module of ours that does not exist."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from importlib.abc import MetaPathFinder

from services.providers import registry
from services.providers.__main__ import main
from services.providers.config import ProviderConfig


def broken(config: ProviderConfig) -> None:
    int(config.name)  # the bug: a name is not a number


class Uninstalled(MetaPathFinder):
    """Finds the top-level modules it is given nowhere, as Python does ones not installed."""

    def __init__(self, modules: Iterable[str]) -> None:
        self.modules = set(modules)

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in self.modules:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


if __name__ == "__main__":
    registry.FAMILIES["broken"] = "tests.providers.broken_family:broken"
    registry.FAMILIES["misspelt"] = "tests.providers.misspelt_family:MisspeltAdapter"
    sys.meta_path.insert(0, Uninstalled(os.environ.get("UNINSTALLED", "").split(",")))
    main()
