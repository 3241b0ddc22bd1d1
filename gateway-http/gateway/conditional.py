"""An asset's entity tag and the conditional requests that use it (RFC 9110, section 13)."""

from __future__ import annotations

import re

# One entity-tag of a list: optionally weak (W/), then opaque characters in quotes.
_ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')


def entity_tag(sha256: str) -> str:
    """An asset's strong ETag: its bytes' sha256, quoted; the same bytes, the same tag."""
    return f'"{sha256}"'


def none_match(header: str, etag: str) -> bool:
    """Whether If-None-Match `header` names `etag` ("*" names any): then a GET or HEAD is
    answered 304. Weak comparison, as RFC 9110 asks here: W/"x" names "x" too."""
    if header.strip() == "*":
        return True
    opaque = etag.strip('"')
    return any(tag == opaque for _, tag in _ENTITY_TAG.findall(header))


def range_applies(if_range: str | None, etag: str) -> bool:
    """Whether a Range is served given If-Range `if_range`: with none, yes; with an entity-tag,
    only when it is `etag` itself (strong comparison: never a weak tag); with a date, never,
    as the bridge sends no Last-Modified to compare it with. Otherwise the whole body goes."""
    if if_range is None:
        return True
    return if_range.strip() == etag
