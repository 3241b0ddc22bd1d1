"""The line a stopping worker logs to name the jobs it hands back; `genmesh up` repeats it."""

from __future__ import annotations

from collections.abc import Sequence

# How the line's message begins: `genmesh up` finds it in the worker's log by it.
HANDED_BACK = "handed back"
# Job ids the line names; past that it counts the rest.
SHOWN_IDS = 10


def handed_back(job_ids: Sequence[str]) -> str:
    """ "handed back 2 unfinished jobs to the queue for another worker: a, b"; past SHOWN_IDS
    ids, "… and N more"."""
    count = len(job_ids)
    named = ", ".join(job_ids[:SHOWN_IDS])
    if count > SHOWN_IDS:
        named += f" and {count - SHOWN_IDS} more"
    jobs = "job" if count == 1 else "jobs"
    return f"{HANDED_BACK} {count} unfinished {jobs} to the queue for another worker: {named}"
