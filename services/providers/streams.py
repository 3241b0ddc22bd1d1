"""Parsers for the streamed bodies providers send: Server-Sent Events and NDJSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from services.providers.adapter import Retryable


@dataclass
class ServerSentEvent:
    event: str
    data: str
    id: str = ""


async def iter_sse(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """Events of a text/event-stream body, per the WHATWG rules (comments skipped)."""
    event, last_id = "", ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
    if data:
        yield ServerSentEvent(event or "message", "\n".join(data), last_id)


async def iter_ndjson(response: httpx.Response) -> AsyncIterator[Any]:
    """One decoded JSON value per non-empty line."""
    async for line in response.aiter_lines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError:
            raise Retryable("bad_response", "the provider streamed a non-JSON line") from None
