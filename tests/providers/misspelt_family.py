"""An adapter family module with a bug in its imports: it names a module of ours that does
not exist (services.providers.htp for services.providers.http)."""

from __future__ import annotations

from services.providers.base import ConfiguredAdapter
from services.providers.htp import bearer  # type: ignore[import-not-found]  # the bug


class MisspeltAdapter(ConfiguredAdapter):
    family = "misspelt"
    headers = bearer
