"""How a followed job is shown: a live panel for people, JSON lines for programs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, RenderableType
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from genmesh.v1 import job_pb2, job_service_pb2
from genmesh_cli.client import TERMINAL_STATES, to_json
from services.common.tasks import state_name, task_name
from services.router.pipelines.status import fold_step

STATE_STYLE = {
    job_pb2.JOB_STATE_QUEUED: "yellow",
    job_pb2.JOB_STATE_PROCESSING: "cyan",
    job_pb2.JOB_STATE_PREVIEW_READY: "cyan",
    job_pb2.JOB_STATE_COMPLETED: "green",
    job_pb2.JOB_STATE_FAILED: "red",
    job_pb2.JOB_STATE_CANCELLED: "magenta",
}

# How a pipeline step's state shows beside its name.
_STEP_MARK = {
    job_pb2.JOB_STATE_QUEUED: "·",
    job_pb2.JOB_STATE_COMPLETED: "✓",
    job_pb2.JOB_STATE_FAILED: "✗",
    job_pb2.JOB_STATE_CANCELLED: "✗",
}


# States of a job under way on a provider; moving between them continues one run.
_RUNNING = frozenset({job_pb2.JOB_STATE_PROCESSING, job_pb2.JOB_STATE_PREVIEW_READY})


@dataclass
class JobPanel:
    """The latest known state of one job, rendered as a small panel (rich calls __rich__)."""

    job_id: str = ""
    task: str = ""
    state: job_pb2.JobState.ValueType = job_pb2.JOB_STATE_UNSPECIFIED
    provider: str = ""
    percent: float | None = None
    message: str = ""
    queue_position: int | None = None
    previews: int = 0
    note: str = ""
    # Why the job's last run was handed back (its worker stopping or lost, a retry, a
    # fallback): kept through the next run's opening line, which would else hide it at once.
    handed_back: str = ""
    _restarting: bool = False
    # The newest event shown.
    sequence: int = 0
    # A pipeline job's steps, kept up to date from its events as the router keeps them.
    pipeline: job_pb2.Job | None = None
    # Wall-clock start: the job's create_time once known, else when the command started.
    started: float = field(default_factory=time.time)
    ended: float | None = None
    _spinner: Spinner = field(default_factory=lambda: Spinner("dots", style="cyan"))

    def job(self, job: job_pb2.Job) -> None:
        self.job_id = job.id
        self.task = task_name(job.spec.task) if job.spec.task else self.task
        if job.HasField("pipeline"):
            self.task = f"pipeline {job.pipeline.name or 'custom'}"
            if self.pipeline is None or not self.sequence:
                self.pipeline = job_pb2.Job(pipeline=job.pipeline)
        self.provider = job.provider or self.provider
        if job.HasField("create_time"):
            self.started = job.create_time.ToMicroseconds() / 1e6
        if self.sequence and job.last_sequence > self.sequence:
            # A re-attach: the events in between follow, and show the state moving forward.
            return
        self._progress(job.state, job.progress)
        if job.state in TERMINAL_STATES and job.HasField("update_time"):
            self.ended = job.update_time.ToMicroseconds() / 1e6

    def event(self, event: job_pb2.JobEvent) -> None:
        self.note = ""
        self.sequence = event.sequence
        self.provider = event.provider or self.provider
        if event.state == job_pb2.JOB_STATE_PREVIEW_READY and event.HasField("preview"):
            self.previews += 1
        if self.pipeline is not None:
            fold_step(self.pipeline, event, event.state in TERMINAL_STATES)
        self._progress(event.state, event.progress)
        self._hand_back(event)
        if event.state in TERMINAL_STATES:
            # The event's own time: a re-attach to a finished job replays it long after.
            self.ended = (
                event.time.ToMicroseconds() / 1e6 if event.HasField("time") else time.time()
            )
            if event.state == job_pb2.JOB_STATE_COMPLETED:
                self.percent = 100.0

    def _hand_back(self, event: job_pb2.JobEvent) -> None:
        """Keep a hand-back's why through the next run's opening event; drop it after."""
        if event.handed_back:
            # On a line of its own: as the progress message the next run's first would hide it.
            self.handed_back, self.message = event.progress.message, ""
            self._restarting = True
        elif self._restarting and event.state not in TERMINAL_STATES:
            self._restarting = False  # the next run's opening line ("restarted (delivery 2)")
        else:
            self.handed_back, self._restarting = "", False

    def _progress(self, state: job_pb2.JobState.ValueType, progress: job_pb2.Progress) -> None:
        if state != self.state and not {state, self.state} <= _RUNNING:
            # A new state starts a new progress story; stale numbers would mislead. A preview
            # does not: the run it came from goes on, and so does its progress.
            self.percent, self.message = None, ""
        self.state = state
        if progress.HasField("percent"):
            self.percent = max(0.0, min(100.0, progress.percent))
        if progress.message:
            self.message = progress.message
        if state == job_pb2.JOB_STATE_QUEUED and progress.HasField("queue_position"):
            self.queue_position = progress.queue_position
        elif state != job_pb2.JOB_STATE_QUEUED:
            self.queue_position = None

    def elapsed(self) -> float:
        return max(0.0, (self.ended or time.time()) - self.started)

    def __rich__(self) -> RenderableType:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        grid.add_row("job", self.job_id or "submitting…")
        if self.task:
            grid.add_row("task", self.task)
        style = STATE_STYLE.get(self.state, "white")
        state = Text(state_name(self.state) if self.state else "submitting", style=style)
        if self.previews:
            state.append(f"  ({self.previews} preview{'s' * (self.previews > 1)})", "dim")
        grid.add_row("state", state)
        if self.pipeline is not None:
            grid.add_row("steps", self._steps_line())
        else:
            grid.add_row("provider", self.provider or "-")
        if self.queue_position is not None:
            grid.add_row("queue", f"{self.queue_position} ahead")
        grid.add_row("progress", self._progress_line())
        if self.handed_back:
            # "restart", not "handed back": a wider label would shift the whole panel meanwhile.
            grid.add_row("restart", Text(self.handed_back, style="yellow"))
        grid.add_row("elapsed", f"{self.elapsed():.1f}s")
        if self.note:
            grid.add_row("", Text(self.note, style="yellow"))
        return grid

    def _steps_line(self) -> Text:
        assert self.pipeline is not None
        line = Text()
        for i, step in enumerate(self.pipeline.pipeline.steps):
            if i:
                line.append(" → ", "dim")
            mark = _STEP_MARK.get(step.state, "…")
            line.append(f"{step.name} {mark}", STATE_STYLE.get(step.state, "white"))
        return line

    def _progress_line(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.percent is not None:
            parts.append(ProgressBar(total=100.0, completed=self.percent, width=30))
            parts.append(Text(f"{self.percent:3.0f}%"))
        elif self.state not in TERMINAL_STATES:
            parts.append(self._spinner)
        if not parts and not self.message:
            return Text("-")
        line = Table.grid(padding=(0, 1))
        for _ in parts:
            line.add_column(no_wrap=True)
        if self.message:
            # The message wraps where the line is short of room, so the bar and its
            # percentage keep their width (they were squeezed, the percentage dropped).
            line.add_column(overflow="fold")
            parts.append(Text(self.message, style="dim"))
        line.add_row(*parts)
        return line


@dataclass
class LiveView:
    """Feeds a JobPanel that rich.live redraws; notes appear inside the panel."""

    panel: JobPanel

    def job(self, job: job_pb2.Job) -> None:
        self.panel.job(job)

    def event(self, event: job_pb2.JobEvent) -> None:
        self.panel.event(event)

    def note(self, text: str) -> None:
        self.panel.note = text


@dataclass
class JsonView:
    """Every stream message as one JSON line on `out`; notes go to stderr."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def job(self, job: job_pb2.Job) -> None:
        self._line(to_json(job_service_pb2.WatchJobResponse(job=job)))

    def event(self, event: job_pb2.JobEvent) -> None:
        self._line(to_json(job_service_pb2.WatchJobResponse(event=event)))

    def note(self, text: str) -> None:
        print(f"genmesh: {text}", file=self.err, flush=True)

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def console(stderr: bool = False) -> Console:
    """A console that only uses colour and cursor tricks when it writes to a terminal."""
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal:
        # Piped or logged output has no width to fit; don't squeeze tables into 80 columns.
        out.width = max(out.width, 200)
    return out
