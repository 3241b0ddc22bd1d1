"""Answers routers asking which jobs this worker is running.

The answer itself matters less than the subscription: while it exists the worker's NATS
connection is alive. A worker killed outright loses the subscription with its connection,
and a router's request then finds no responder at once (services.router.lost_workers).
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from genmesh.v1 import bus_pb2
from services.common.bus import Bus
from services.providers.runtime import ProviderWorker


async def answer_liveness(
    nc: Client, bus: Bus, worker_id: str, workers: list[ProviderWorker]
) -> Subscription:
    """Subscribe on the worker's subject; returns the subscription."""

    async def on_request(msg: Msg) -> None:
        running = bus_pb2.WorkerRunning(job_ids=[j for w in workers for j in w.running_jobs])
        await msg.respond(running.SerializeToString())

    return await nc.subscribe(bus.worker_subject(worker_id), cb=on_request)
