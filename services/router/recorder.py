"""Applies workers' events to the store, once each, then tells watchers."""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from genmesh.v1 import bus_pb2
from services.common.bus import Bus
from services.common.pulling import PullConsumer, worked_on
from services.router.fallback import Fallback
from services.router.hedging import Hedger
from services.router.lost_workers import LostWorkers
from services.router.ordering import defer_delay
from services.router.queues import QueueDepths
from services.router.store import Incoming, JobStore
from services.router.transitions import TERMINAL
from services.router.watch import WatchHub

log = logging.getLogger(__name__)

BATCH = 512


class Recorder:
    """A durable pull consumer on the events stream, shared by every router replica.

    A batch is applied in one transaction and acked only after it commits, so a router
    that dies mid-batch leaves the events to be redelivered; the store drops repeats.

    Replicas take a job's messages in any order, so the store applies each worker run's
    messages in the order they were published (see ordering). One that came before its
    predecessor is not applied but nakked, to come again after another replica (or this
    one) has applied the predecessor.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        bus: Bus,
        store: JobStore,
        hub: WatchHub,
        queues: QueueDepths,
        fallback: Fallback,
        hedger: Hedger,
        lost: LostWorkers,
        ack_wait: float = 5.0,
    ) -> None:
        # Seconds a fetched event may go unacknowledged before JetStream sends it again:
        # how long the events a dead replica held (and each of their jobs' later events,
        # which wait behind them) are stalled. A slow batch is heartbeated meanwhile.
        self._ack_wait = ack_wait
        self._nc = nc
        self._js = js
        self._bus = bus
        self._store = store
        self._hub = hub
        self._queues = queues
        self._fallback = fallback
        self._hedger = hedger
        self._lost = lost

    async def consumer(self) -> PullConsumer:
        """The shared recorder consumer (created if missing), ready to fetch from."""
        events = PullConsumer(
            self._nc, self._js, self._bus.events_stream, self._bus.recorder_consumer
        )
        await events.start(
            self._bus.events_wildcard,
            ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait,
                # No max_deliver: a deferred message comes back as often as it must.
                max_ack_pending=50_000,
            ),
        )
        return events

    async def run(self) -> None:
        events = await self.consumer()
        try:
            while True:
                try:
                    msgs = await events.fetch(BATCH, wait=1.0)
                except nats.errors.ConnectionClosedError:
                    return
                except Exception:
                    # A transient JetStream error must not end recording for this replica.
                    log.warning("fetching events failed; retrying", exc_info=True)
                    await asyncio.sleep(0.5)
                    continue
                if not msgs:
                    continue
                try:
                    await self.record(msgs)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("recording %d event(s) failed; they'll be redelivered", len(msgs))
                    for msg in msgs:
                        await msg.nak(delay=1.0)
        finally:
            await events.close()

    async def record(self, msgs: list[Msg]) -> None:
        """Apply fetched messages in one transaction; then ack them, or nak those deferred,
        and tell the watchers."""
        batch: list[Incoming] = []
        good = []
        for msg in msgs:
            wrapper = bus_pb2.WorkerEvent()
            try:
                wrapper.ParseFromString(msg.data)
            except Exception:
                log.warning("dropping undecodable event on %s", msg.subject)
                await msg.term()
                continue
            meta = msg.metadata
            now = time.time()
            published = min(meta.timestamp.timestamp(), now)
            age = now - published
            batch.extend(incoming(wrapper, meta.sequence.stream, meta.num_delivered or 1, age))
            good.append(msg)
            self._lost.heard(wrapper, published)
        # Heartbeated while applied, not after: a heartbeat following a delayed nak would
        # undo the delay.
        async with worked_on(msgs, self._ack_wait):
            # Rerouted jobs are dispatched before the events are acked: a router dying in
            # between leaves them marked undispatched, and the next start publishes them.
            routed = await self._store.apply_routed(batch, self._fallback.reroute)
            await self._fallback.settle(routed)
            await self._hedger.settle(routed)
        for msg in good:
            meta = msg.metadata
            if meta.sequence.stream in routed.deferred:
                await msg.nak(delay=defer_delay(meta.num_delivered or 1))
            else:
                await msg.ack()
        self._queues.observe(routed.events)
        await self._hub.publish(routed.events)


def incoming(
    message: bus_pb2.WorkerEvent, seq: int, deliveries: int = 1, age: float = 0.0
) -> list[Incoming]:
    """A worker message's events to apply; it is at stream sequence `seq`, delivered
    `deliveries` times, stored `age` seconds ago."""
    events = message.events or [message.event]
    return [
        Incoming(
            e.job_id,
            e,
            seq,
            message.attempt or None,
            part,
            run=message.run_id,
            index=message.index,
            deliveries=deliveries,
            age=age,
            outcome=events[-1].state in TERMINAL,
            handed_back=message.handed_back,
        )
        for part, e in enumerate(events)
    ]
