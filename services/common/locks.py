"""An exclusive lock on a file, held by this process (and any child that inherits it)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(path: Path) -> Iterator[int | None]:
    """Hold an exclusive flock on `path` (made if missing) while the block runs: yields the
    locked fd, or None when another open file holds it. OSError when it cannot be opened."""
    with path.open("ab") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
        else:
            yield f.fileno()
