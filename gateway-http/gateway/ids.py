"""The `{…:id}` path convertor: an id is one path segment without ':', since ':' starts a
custom method (`/v1/jobs/{id}:cancel`), so `/v1/jobs/:cancel` names nothing (404) rather than
a job called ":cancel" (405)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor


class IdConvertor(Convertor[str]):
    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Registered on import, before any route that uses it is compiled; registering is idempotent.
register_url_convertor("id", IdConvertor())

# Path parameters routed through `{…:id}`; empty is refused like any other malformed id.
JobId = Annotated[str, Path(min_length=1)]
BatchId = Annotated[str, Path(min_length=1)]
AssetId = Annotated[str, Path(min_length=1)]
