"""Sends a lost worker's running jobs on at once, instead of after JetStream's ack wait.

A worker killed outright (SIGKILL, OOM, a crashed host) leaves its jobs' messages unacked,
and JetStream sends them again only once the jobs consumer's ack wait is over (30 s by
default), with nothing to show the job's watchers meanwhile. The router learns from each
worker message which worker runs the job and the reply subject of the job message it works
on. Every second it asks each worker it has running jobs on which jobs it still runs (core
NATS request/reply). While the worker's connection is alive its subscription answers; once
it is gone, NATS answers "no responders" at once. A worker that has had no responder for
`lost_after` seconds is lost: each of its jobs' messages is nakked through its reply
subject, so JetStream delivers it to another worker now, and the job's watchers are told.

A worker that stopped cleanly says so in its registration (services.router.catalog): it
handed its unfinished jobs back itself, so its runs are forgotten, not nakked again (a nak
through an old delivery's subject would send the job on a second time, wherever it runs
now). Only "no responders" counts. A worker that is slow to answer (busy, or cut off by the
network while its connection lingers) is left to the ack wait, as a job running twice costs
more than one waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client

from genmesh.v1 import bus_pb2, job_pb2
from services.common.bus import Bus
from services.router.store import Incoming, JobStore
from services.router.transitions import TERMINAL
from services.router.watch import WatchHub

log = logging.getLogger(__name__)

# Seconds between rounds of asking, and how long one request may take.
PROBE_EVERY = 1.0
PROBE_TIMEOUT = 1.0


@dataclass
class _Run:
    job_id: str
    delivery: str
    # monotonic time the run was last heard of; a worker's answer to a request sent before
    # that cannot speak for it.
    heard: float


@dataclass
class _Worker:
    runs: dict[str, _Run] = field(default_factory=dict)
    # monotonic time of the first "no responders" since the worker last answered.
    silent_since: float | None = None


class LostWorkers:
    """Tracks the runs under way on each worker and acts when a worker's connection is gone."""

    def __init__(
        self,
        nc: Client,
        bus: Bus,
        store: JobStore,
        hub: WatchHub,
        lost_after: float,
        left: Callable[[str], bool] = lambda _worker_id: False,
        every: float = PROBE_EVERY,
    ) -> None:
        self._nc = nc
        # Whether a worker said it was stopping (a clean stop).
        self._left = left
        self._every = every
        self._bus = bus
        self._store = store
        self._hub = hub
        self._lost_after = lost_after
        self._workers: dict[str, _Worker] = {}

    def heard(self, message: bus_pb2.WorkerEvent) -> None:
        """Note a worker message the recorder fetched: its run goes on, or has ended."""
        if not (message.worker_id and message.run_id and message.delivery):
            return  # a worker from before runs or deliveries: the ack wait covers it
        events = message.events or [message.event]
        if events[-1].state in TERMINAL:
            worker = self._workers.get(message.worker_id)
            if worker is not None:
                worker.runs.pop(message.run_id, None)
                if not worker.runs:
                    del self._workers[message.worker_id]
            return
        worker = self._workers.setdefault(message.worker_id, _Worker())
        worker.runs[message.run_id] = _Run(events[-1].job_id, message.delivery, time.monotonic())

    async def run(self) -> None:
        if self._lost_after <= 0:
            return
        while True:
            await asyncio.sleep(self._every)
            await asyncio.gather(*(self._probe(w) for w in list(self._workers)))

    async def _probe(self, worker_id: str) -> None:
        asked = time.monotonic()
        try:
            reply = await self._nc.request(
                self._bus.worker_subject(worker_id), b"", timeout=min(self._every, PROBE_TIMEOUT)
            )
        except nats.errors.NoRespondersError:
            await self._silent(worker_id, asked)
            return
        except Exception:
            # A timeout, or this router's own connection in trouble: nothing learnt.
            return
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        worker.silent_since = None
        answer = bus_pb2.WorkerRunning()
        try:
            answer.ParseFromString(reply.data)
        except Exception:
            return
        # Runs the worker no longer has (ended, handed back, waiting to retry) whose end
        # reached another router replica, or came before the run's last progress.
        still = set(answer.job_ids)
        for run_id, run in list(worker.runs.items()):
            if run.heard < asked and run.job_id not in still:
                del worker.runs[run_id]
        if not worker.runs:
            del self._workers[worker_id]

    async def _silent(self, worker_id: str, asked: float) -> None:
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        if worker.silent_since is None:
            worker.silent_since = asked
        if asked - worker.silent_since < self._lost_after:
            return
        del self._workers[worker_id]
        if self._left(worker_id):
            return
        runs = list(worker.runs.values())
        log.warning(
            "worker %s is gone (no NATS connection for %.0f s): sending its %d running "
            "job(s) to another worker",
            worker_id,
            asked - worker.silent_since,
            len(runs),
        )
        for run in runs:
            # Nakked by its own worker's reply subject: JetStream delivers it again at once.
            await self._nc.publish(run.delivery, b"-NAK")
        await self._tell(worker_id, [run.job_id for run in runs])

    async def _tell(self, worker_id: str, job_ids: list[str]) -> None:
        batch = []
        for job_id in dict.fromkeys(job_ids):
            event = job_pb2.JobEvent(job_id=job_id, state=job_pb2.JOB_STATE_PROCESSING)
            event.progress.message = (
                f"worker {worker_id} was lost (its NATS connection closed); "
                "the job goes to another worker"
            )
            event.time.GetCurrentTime()
            batch.append(Incoming(job_id, event))
        try:
            applied = await self._store.apply(batch)
        except Exception:
            log.warning("could not record the lost worker's jobs", exc_info=True)
            return
        await self._hub.publish(applied)
