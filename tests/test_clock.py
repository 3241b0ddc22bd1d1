"""Timestamps stamped and converted as protobuf's own helpers would, only cheaper."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.clock import from_epoch, stamp


def test_stamp_is_now_in_whole_microseconds() -> None:
    before = time.time_ns() // 1000
    stamped = Timestamp()
    stamp(stamped)
    after = time.time_ns() // 1000
    assert before <= stamped.ToMicroseconds() <= after
    # Six fractional digits in JSON, as GetCurrentTime gave: not nine.
    assert stamped.nanos % 1000 == 0
    assert len(stamped.ToJsonString().rstrip("Z").split(".")[-1]) in (3, 6)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 25, 12, 0, 1, 123456, tzinfo=UTC),
        datetime(2020, 1, 2, 3, 4, 5, 678901),  # naive: UTC
        datetime(1960, 5, 5, tzinfo=timezone(timedelta(hours=3))),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_from_epoch_is_what_from_datetime_gives(moment: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment)
    converted = Timestamp()
    converted.FromMicroseconds(from_epoch(moment))
    assert converted == expected
