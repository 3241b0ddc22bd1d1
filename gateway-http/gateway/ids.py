"""The `{…:id}` path convertor: an id is one path segment without ':', since ':' starts a
custom method (`/v1/jobs/{id}:cancel`), so `/v1/jobs/:cancel` names nothing (404) rather than
a job called ":cancel" (405)."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class IdConvertor(Convertor[str]):
    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Registered on import, before any route that uses it is compiled; registering is idempotent.
register_url_convertor("id", IdConvertor())
