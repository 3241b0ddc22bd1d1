"""Checks on caller-chosen strings that reach a database, shared by every service."""

from __future__ import annotations

from services.common.errors import InvalidArgument


def has_control(value: str, *, line_breaks: bool = False) -> bool:
    """True when `value` holds a control character: PostgreSQL rejects NUL in text, and the
    others only make trouble downstream. With `line_breaks`, tab, LF and CR are allowed, as
    free text (a prompt, a reason) may be written on several lines."""
    allowed = _LINE_BREAKS if line_breaks else ""
    return any((ord(c) < 0x20 or ord(c) == 0x7F) and c not in allowed for c in value)


_LINE_BREAKS = "\t\n\r"


def check_text(name: str, value: str, limit: int, *, required: bool = False) -> None:
    """InvalidArgument unless `value` is at most `limit` characters with no control
    characters (and not empty, when `required`)."""
    if required and not value:
        raise InvalidArgument(f"{name} is required")
    if len(value) > limit:
        raise InvalidArgument(f"{name} is longer than {limit} characters")
    if has_control(value):
        raise InvalidArgument(f"{name} contains control characters")


def findable(value: str, limit: int) -> bool:
    """Whether a stored key could equal `value`: not empty, within `limit` characters and free
    of control characters, as every service checks before storing one. Look up nothing else:
    it cannot match, and PostgreSQL refuses a NUL outright."""
    return 0 < len(value) <= limit and not has_control(value)
