"""How often `genmesh up` restarts a child that exits on its own, and how long it waits first."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# Restarts of one child counted against the limit: those within this many seconds.
WINDOW = 60.0
FIRST_DELAY = 0.5
MAX_DELAY = 8.0


@dataclass
class RestartBudget:
    """At most `limit` restarts of each child within WINDOW seconds; the delay before each
    doubles with the restarts already in the window, so a child that crashes at once does
    not spin, while one that crashed an hour ago comes back at once."""

    limit: int
    clock: Callable[[], float] = time.monotonic
    _times: dict[str, deque[float]] = field(default_factory=dict)

    def next_delay(self, name: str) -> float | None:
        """Seconds to wait before restarting `name` once more (counting it), or None when
        its restarts in the window have used the limit up."""
        now = self.clock()
        times = self._times.setdefault(name, deque())
        while times and now - times[0] > WINDOW:
            times.popleft()
        if len(times) >= self.limit:
            return None
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** len(times))
        times.append(now)
        return delay

    def used(self, name: str) -> int:
        """Restarts of `name` within the window so far."""
        return len(self._times.get(name, ()))
