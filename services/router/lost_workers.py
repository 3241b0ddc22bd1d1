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

A nak through an old delivery's subject sends the job on again wherever it runs now
(nats-server checks only that the message is still unacked), so a run is sent on only while
it is its job's latest, and once. A worker that stopped cleanly says so in its registration
(services.router.catalog): it handed its unfinished jobs back itself, so its runs are
forgotten; so is a run whose worker handed its job back to retry it later. The job store
has the last word (ordering.Runs.lose): it takes a run as lost only if no later delivery of
the job has begun, the run did not hand its job back, and no router replica took it
already; the note and the nak follow only then.

Only "no responders" counts. A worker that is slow to answer (busy, or cut off by the
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
from nats.aio.msg import Msg

from genmesh.v1 import bus_pb2, job_pb2
from services.common.bus import Bus
from services.common.clock import stamp
from services.common.pulling import hand_back
from services.router.store import Incoming, JobStore
from services.router.transitions import TERMINAL
from services.router.watch import WatchHub

log = logging.getLogger(__name__)

# Seconds a lost worker's job is sent on before JetStream could have sent it on itself, at
# least: what its nak may take to arrive.
SAFETY = 1.0
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
    # The worker's ack wait (WorkerEvent.ack_wait).
    ack_wait: float


@dataclass
class _Worker:
    runs: dict[str, _Run] = field(default_factory=dict)
    # monotonic time of the first "no responders" since the worker last answered.
    silent_since: float | None = None
    # Unix time of the worker's latest sign of life: an answer, or a message it published.
    alive_at: float = 0.0


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

    @property
    def watched(self) -> set[str]:
        """Ids of the jobs whose runs this router watches over."""
        return {run.job_id for worker in self._workers.values() for run in worker.runs.values()}

    def heard(self, message: bus_pb2.WorkerEvent, published: float) -> None:
        """Note a worker message the recorder fetched, published at Unix time `published`:
        its run goes on, or has ended (an outcome, or the job handed back)."""
        if self._lost_after <= 0:
            return  # nothing would ever forget the runs
        if not (message.worker_id and message.run_id and message.delivery and message.ack_wait):
            return  # a worker from before runs or deliveries: the ack wait covers it
        events = message.events or [message.event]
        if events[-1].state in TERMINAL or message.handed_back:
            worker = self._workers.get(message.worker_id)
            if worker is not None:
                worker.runs.pop(message.run_id, None)
                self._forget_if_idle(message.worker_id)
            return
        worker = self._workers.setdefault(message.worker_id, _Worker())
        worker.alive_at = max(worker.alive_at, published)
        worker.runs[message.run_id] = _Run(
            events[-1].job_id, message.delivery, time.monotonic(), message.ack_wait
        )

    def _forget_if_idle(self, worker_id: str) -> None:
        """Stop asking a worker once no run of it is left to watch over."""
        worker = self._workers.get(worker_id)
        if worker is not None and not worker.runs:
            del self._workers[worker_id]

    async def run(self) -> None:
        if self._lost_after <= 0:
            return
        while True:
            await asyncio.sleep(self._every)
            await asyncio.gather(*(self._probe_logged(w) for w in list(self._workers)))

    async def _probe_logged(self, worker_id: str) -> None:
        # One failure (a publish refused around a reconnect) must not end the watch.
        try:
            await self._probe(worker_id)
        except Exception:
            log.warning("checking on worker %s failed; will retry", worker_id, exc_info=True)

    async def _probe(self, worker_id: str) -> None:
        asked = time.monotonic()
        answered = time.time()
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
        worker.alive_at = max(worker.alive_at, answered)
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
        self._forget_if_idle(worker_id)

    async def _silent(self, worker_id: str, asked: float) -> None:
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        if worker.silent_since is None:
            worker.silent_since = asked
        if asked - worker.silent_since < self._lost_after:
            return
        if self._left(worker_id):
            del self._workers[worker_id]
            return
        # JetStream sends a job on itself once its ack wait has passed since the worker's last
        # heartbeat, a third of it at most before the worker was last heard from. A nak
        # after that could take the job from the worker it went to: those are left to it.
        now = time.time()
        runs = {
            r: run
            for r, run in worker.runs.items()
            if now < worker.alive_at + run.ack_wait * 2 / 3 - SAFETY
        }
        if not runs:
            del self._workers[worker_id]
            return
        try:
            taken = await self._store.apply_routed(
                [self._note(worker_id, r, runs[r]) for r in runs]
            )
        except Exception:
            log.warning("could not record the lost worker's jobs; will try again", exc_info=True)
            return
        self._workers.pop(worker_id, None)
        if taken.lost:
            log.warning(
                "worker %s is gone (no NATS connection for %.0f s): sending its %d running "
                "job(s) to another worker",
                worker_id,
                asked - worker.silent_since,
                len(taken.lost),
            )
        for run_id in taken.lost:
            # Nakked through its own worker's reply subject: JetStream delivers it again
            # at once, and keeps the nak should the server restart before anyone takes it.
            await hand_back(Msg(self._nc, reply=runs[run_id].delivery))
        await self._hub.publish(taken.events)

    @staticmethod
    def _note(worker_id: str, run_id: str, run: _Run) -> Incoming:
        """The job's note that the run's worker was lost, applied if the run is taken as lost:
        only the job's latest run, not ended (handed back), and only by one router replica."""
        event = job_pb2.JobEvent(job_id=run.job_id, state=job_pb2.JOB_STATE_PROCESSING)
        event.progress.message = (
            f"worker {worker_id} was lost (its NATS connection closed); "
            "the job goes to another worker"
        )
        event.handed_back = True
        stamp(event.time)
        return Incoming(run.job_id, event, lost_run=run_id)
