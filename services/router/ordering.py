"""Putting a job's worker messages back in the order they were published.

Every router replica fetches from the one recorder consumer, so two messages of one job can
reach two replicas and be applied in either order. Applied in the wrong order, the earlier
message would look like a repeat or a step backwards and be lost, with its progress.

A worker numbers the messages of each run (one delivery of the job to it, named at random)
from 1, and stores each before it sends the next. A job's row keeps where each of its runs
has got to, and the store takes a message from run r with index i at stream sequence s as:

- a repeat, dropped: i is at or below r's last index;
- stale, dropped: a later run of the same attempt began after s, so r was given up on (the
  job was redelivered) before it published this. Never an outcome: an attempt stores one
  outcome at most (its message id is the attempt's), so a later run's would be discarded
  by JetStream as a repeat, and dropping this one would leave the job without any;
- next, applied: i follows r's last index, or is 1 for a run not seen before;
- early, deferred: anything else. Its predecessor is on its way, maybe through another
  replica; the recorder hands the message back to JetStream to come again shortly.

A message counts as handled once it is judged, whatever the state machine then makes of it,
so nothing waits for a message that was dropped. Runs are kept per attempt: a hedged job
has two attempts publishing at once, and neither supersedes the other.

A message that has waited DEFER_FOR seconds waits no more and is judged by stream sequence
alone, as messages without a run are (an outcome is applied): its predecessor is not
coming (it left the stream, or its run was forgotten). Waiting means both: it is DEFER_FOR
seconds old (from the stream's timestamp) and was delivered as often as deferrals that
long take, so neither an old backlog nor a burst of redeliveries after a failed batch
cuts the wait short; past GIVE_UP seconds its age alone decides, so nothing is handed back
forever should its delivery count be reset. DEFER_FOR outlasts the recorder's ack wait (at
most LONGEST_ACK_WAIT), so a predecessor held by a replica that died comes back first.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from services.common.backoff import doubling

# Seconds before a deferred message comes again: doubling from FIRST_DELAY up to MAX_DELAY.
FIRST_DELAY = 0.05
MAX_DELAY = 2.0
# Seconds a message waits for its predecessor before stream order decides.
DEFER_FOR = 45.0
# The longest ack wait the recorder may be given (GENMESH_RECORDER_ACK_WAIT).
LONGEST_ACK_WAIT = 30.0
# Seconds after which a message's age alone makes it overdue.
GIVE_UP = 4 * DEFER_FOR
# Runs remembered per attempt, the latest begun; an attempt has one per delivery of the job.
KEEP = 4


class Verdict(enum.Enum):
    NEXT = "next"  # apply it
    REPEAT = "repeat"  # drop it
    STALE = "stale"  # drop it
    EARLY = "early"  # defer it
    OVERDUE = "overdue"  # early, but waited long enough: apply it if stream order allows


@dataclass
class _Run:
    attempt: int
    last: int  # the highest index handled
    start: int  # stream sequence of its message 1; 0 until that is handled
    # Over without an outcome: its worker handed the job message back, or was lost and a
    # router sent the message on (services.router.lost_workers).
    ended: bool = False


class Runs:
    """Where each of a job's runs has got to, as kept in its row (jobs.runs)."""

    def __init__(self, runs: dict[str, _Run] | None = None) -> None:
        self._runs = runs or {}
        self.changed = False

    @classmethod
    def load(cls, stored: str | None) -> Runs:
        if not stored:
            return cls()
        runs = json.loads(stored)
        return cls({r: _Run(a, last, start, bool(ended)) for r, a, last, start, *ended in runs})

    def dump(self) -> str | None:
        if not self._runs:
            return None
        # An ended run only has a fifth field, so a row without one reads as it always did.
        return json.dumps(
            [
                [r, x.attempt, x.last, x.start, *([1] if x.ended else [])]
                for r, x in self._runs.items()
            ]
        )

    def place(
        self,
        run: str,
        attempt: int,
        index: int,
        seq: int,
        *,
        overdue: bool,
        outcome: bool = False,
        ends: bool = False,
    ) -> Verdict:
        """Judge message `index` of `run` (of `attempt`), at stream sequence `seq`, which
        carries the attempt's `outcome` or not, and `ends` the run without one or not; a
        message judged anything but EARLY is noted as handled."""
        known = self._runs.get(run)
        if known is not None and index <= known.last:
            return Verdict.REPEAT
        superseded = any(r.attempt == attempt and r.start > seq for r in self._runs.values())
        if superseded and not outcome:
            verdict = Verdict.STALE
        elif superseded or index == (known.last if known is not None else 0) + 1:
            verdict = Verdict.NEXT
        elif overdue:
            verdict = Verdict.OVERDUE
        else:
            return Verdict.EARLY
        if known is None:
            known = self._runs[run] = _Run(attempt, 0, 0)
            self._forget_old(attempt, run)
        known.last = index
        if index == 1:
            known.start = seq
        known.ended = known.ended or ends
        self.changed = True
        return verdict

    def lose(self, run: str) -> int | None:
        """Take `run` as lost with its worker, if it is its attempt's latest run and has not
        ended: mark it ended and return its attempt; else None (its job message was handed
        back, or has been delivered again since, so sending it on would run the job twice)."""
        known = self._runs.get(run)
        if known is None or known.ended:
            return None
        if any(r.attempt == known.attempt and r.start > known.start for r in self._runs.values()):
            return None
        known.ended = True
        self.changed = True
        return known.attempt

    def _forget_old(self, attempt: int, keep: str) -> None:
        """Forget the attempt's earliest begun runs beyond KEEP, never `keep`. What a
        forgotten run still sends is stale if published before a later run began, and
        otherwise waits until overdue."""
        ours = sorted((r.start, name) for name, r in self._runs.items() if r.attempt == attempt)
        for _, name in [o for o in ours if o[1] != keep][: max(len(ours) - KEEP, 0)]:
            del self._runs[name]


def defer_delay(deliveries: int) -> float:
    """Seconds until a message deferred at its `deliveries`-th delivery comes again."""
    return doubling(max(deliveries, 1), FIRST_DELAY, MAX_DELAY)


def _first_overdue() -> int:
    waited, deliveries = 0.0, 1
    while waited < DEFER_FOR:
        waited += defer_delay(deliveries)
        deliveries += 1
    return deliveries


# The delivery at which a message deferred each time before has waited DEFER_FOR seconds.
OVERDUE_AT = _first_overdue()


def overdue(deliveries: int, age: float) -> bool:
    """Whether a message delivered this often, `age` seconds after it was stored, has
    waited long enough for its predecessor."""
    return (deliveries >= OVERDUE_AT and age >= DEFER_FOR) or age >= GIVE_UP
