"""HTTP-dates as the conditional headers carry them: RFC 9110's three forms, read and written
the same whatever LC_TIME says."""

from __future__ import annotations

import locale
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.conditional import Preconditions, http_date, parse_http_date

# RFC 9110, section 5.6.7: one instant in each form a recipient must accept.
SUNDAY = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
FORMS = (
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
)
# A locale whose day and month names are not English ("So", "Nov"; "Mi", "Okt").
GERMAN = "de_DE.UTF-8"


@pytest.fixture
def german_dates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """LC_TIME set to German for the test: installed, or compiled from glibc's sources."""
    previous = locale.setlocale(locale.LC_TIME)
    try:
        locale.setlocale(locale.LC_TIME, GERMAN)
    except locale.Error:
        localedef = shutil.which("localedef")
        if localedef is None:
            pytest.skip("no German locale, and no localedef to make one")
        made = subprocess.run(
            [localedef, "-i", "de_DE", "-f", "UTF-8", str(tmp_path / GERMAN)],
            capture_output=True,
            check=False,
        )
        if made.returncode != 0:
            pytest.skip(f"no German locale: localedef said {made.stderr!r}")
        monkeypatch.setenv("LOCPATH", str(tmp_path))  # glibc looks here on setlocale
        locale.setlocale(locale.LC_TIME, GERMAN)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_TIME, previous)


@pytest.mark.parametrize("form", FORMS)
def test_each_form_of_an_http_date_is_read(form: str) -> None:
    assert parse_http_date(form) == SUNDAY
    assert parse_http_date(f"  {form.lower()} ") == SUNDAY


@pytest.mark.usefixtures("german_dates")
def test_dates_are_read_and_written_in_english_whatever_the_locale() -> None:
    # strptime's %a and %b follow LC_TIME: under German names every date was ignored, so an
    # If-Modified-Since never gave 304, nor an If-Unmodified-Since 412.
    assert [parse_http_date(form) for form in FORMS] == [SUNDAY] * 3
    assert http_date(SUNDAY) == FORMS[0]
    assert Preconditions(if_modified_since=FORMS[0]).not_modified('"x"', SUNDAY)


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "Sun, 06 Nov 1994 08:49:37 +0000",  # not GMT
        "Sun, 31 Feb 1994 08:49:37 GMT",  # no such day
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Son, 06 Nov 1994 08:49:37 GMT",  # a German day name
        f"{FORMS[0]}, {FORMS[0]}",  # two dates where one goes
        "",
    ],
)
def test_what_is_not_an_http_date_is_ignored(value: str) -> None:
    assert parse_http_date(value) is None
