"""The one backoff the mesh's retry loops share: a first wait, doubling, up to a most."""

from __future__ import annotations


def doubling(failures: int, first: float, most: float) -> float:
    """Seconds to wait after `failures` failed tries in a row: 0 after none, `first` after
    one, twice as long after each more, never over `most`."""
    if failures <= 0:
        return 0.0
    return min(most, first * 2 ** min(failures - 1, 30))
