"""An asset's validators (its entity tag and Last-Modified) and the conditional requests that
use them (RFC 9110, section 13). An asset's bytes never change once stored, so both are strong."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from gateway.errors import PreconditionFailed

# One entity-tag of a list: optionally weak (W/), then opaque characters in quotes.
_ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')
# English names, whatever the locale: strptime's %a and %b follow LC_TIME, so under, say,
# de_DE every date was ignored ("Wed" is no German day).
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_WEEKDAY = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTH = "|".join(_MONTHS)
_TIME = r"(?P<hour>\d\d?):(?P<minute>\d\d?):(?P<second>\d\d?)"
# The three forms of an HTTP-date a recipient must accept (RFC 9110, section 5.6.7):
# IMF-fixdate, then the obsolete RFC 850 and asctime forms. Names in any case and runs of
# spaces are taken, as strptime took them.
_HTTP_DATES = tuple(
    re.compile(form, re.IGNORECASE | re.ASCII)
    for form in (
        rf"(?:{_DAY}),\s+(?P<day>\d\d?)\s+(?P<month>{_MONTH})\s+(?P<year>\d{{4}})\s+{_TIME}\s+GMT",
        rf"(?:{_WEEKDAY}),\s+(?P<day>\d\d?)-(?P<month>{_MONTH})-(?P<year>\d\d)\s+{_TIME}\s+GMT",
        rf"(?:{_DAY})\s+(?P<month>{_MONTH})\s+(?P<day>\d\d?)\s+{_TIME}\s+(?P<year>\d{{4}})",
    )
)


def entity_tag(sha256: str) -> str:
    """An asset's strong ETag: its bytes' sha256, quoted; the same bytes, the same tag."""
    return f'"{sha256}"'


def http_date(when: datetime) -> str:
    """`when` as Last-Modified says it: IMF-fixdate, whole seconds, GMT."""
    return format_datetime(when.astimezone(UTC), usegmt=True)


def parse_http_date(value: str) -> datetime | None:
    """An HTTP-date in any of its three forms; None for anything else, which the conditional
    headers that carry one then ignore."""
    for form in _HTTP_DATES:
        if found := form.fullmatch(value.strip()):
            break
    else:
        return None
    year = int(found["year"])
    if year < 100:
        # RFC 850's two digits, read as strptime's %y read them: 69 to 99 are 1900s.
        year += 1900 if year >= 69 else 2000
    try:
        return datetime(
            year,
            _MONTHS.index(found["month"].title()) + 1,
            int(found["day"]),
            int(found["hour"]),
            int(found["minute"]),
            int(found["second"]),
            tzinfo=UTC,
        )
    except ValueError:  # no such day or time, e.g. 31 Feb
        return None


def _names(header: str, etag: str, *, weak: bool) -> bool:
    """Whether the list of entity-tags `header` names `etag` ("*" names any); with weak
    comparison W/"x" names "x" too, with strong comparison a weak tag names nothing."""
    if header.strip() == "*":
        return True
    opaque = etag.strip('"')
    return any(tag == opaque and (weak or not w) for w, tag in _ENTITY_TAG.findall(header))


def none_match(header: str, etag: str) -> bool:
    """Whether If-None-Match `header` names `etag` (weak comparison, as RFC 9110 asks here):
    then a GET or HEAD is answered 304."""
    return _names(header, etag, weak=True)


@dataclass(frozen=True)
class Preconditions:
    """A GET or HEAD's conditional headers, as sent (None when absent)."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    def __bool__(self) -> bool:
        """Whether any of them was sent."""
        return any(value is not None for value in vars(self).values())

    def not_modified(self, etag: str, modified: datetime) -> bool:
        """Whether the answer is 304 Not Modified, for a representation with `etag` last
        modified at `modified` (whole seconds); PreconditionFailed (412) when If-Match or
        If-Unmodified-Since is false. In RFC 9110's order (section 13.2.2): If-Match, else
        If-Unmodified-Since; then If-None-Match, else If-Modified-Since. A date that does not
        parse is ignored."""
        if self.if_match is not None:
            # Strong comparison: a weak tag never matches; "*" matches any existing asset.
            if not _names(self.if_match, etag, weak=False):
                raise PreconditionFailed(f"If-Match does not name the asset's ETag {etag}")
        elif self.if_unmodified_since is not None:
            since = parse_http_date(self.if_unmodified_since)
            if since is not None and modified > since:
                raise PreconditionFailed(
                    f"the asset was last modified at {http_date(modified)}, after "
                    "If-Unmodified-Since"
                )
        if self.if_none_match is not None:
            return none_match(self.if_none_match, etag)
        if self.if_modified_since is not None:
            since = parse_http_date(self.if_modified_since)
            return since is not None and modified <= since
        return False


def range_applies(if_range: str | None, etag: str, modified: datetime) -> bool:
    """Whether a Range is served given If-Range `if_range`: with none, yes; with an entity-tag,
    only when it is `etag` itself (strong comparison: never a weak tag); with a date, only when
    it is exactly Last-Modified (`modified`). Otherwise the whole body goes."""
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return if_range == etag
    return parse_http_date(if_range) == modified
