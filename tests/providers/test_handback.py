"""The line naming the jobs a stopping worker hands back (services.providers.handback)."""

from __future__ import annotations

from services.providers.handback import SHOWN_IDS, handed_back


def test_one_job_is_named() -> None:
    assert handed_back(["j1"]) == (
        "handed back 1 unfinished job to the queue for another worker: j1"
    )


def test_many_jobs_are_counted_and_the_first_few_named() -> None:
    ids = [f"j{i}" for i in range(SHOWN_IDS + 5)]
    line = handed_back(ids)
    shown = ", ".join(ids[:SHOWN_IDS])
    assert line == (
        f"handed back {SHOWN_IDS + 5} unfinished jobs to the queue for another worker: "
        f"{shown} and 5 more"
    )
