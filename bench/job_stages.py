"""Where one zero-latency job's time goes, stage by stage, on a RUNNING mesh.

Runs jobs one at a time through `Generate`, like row (c) of mesh_bench.py, and reads the
stages off the job's own timestamps: the router stamps the job when it creates it, the
worker stamps each event when it makes it, and the client notes when each message
arrives. Client and mesh share one clock only on one machine, hence loopback only.

    .venv/bin/python bench/job_stages.py [--router 127.0.0.1:50051] [--jobs 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import grpc
import uvloop

# Run as a script, so its own folder is on the path.
from mesh_bench import spec

from genmesh.v1 import generate_service_pb2, generate_service_pb2_grpc, job_pb2

WARM_UP = 20

# (label, where the stage starts, where it ends): marks are ms after the call started.
STAGES = [
    ("call start -> job created (router: checks, routing)", "start", "created"),
    ("job created -> worker starts it (store, dispatch, delivery)", "created", "PROCESSING"),
    ("worker runs it (provider, upload to storage)", "PROCESSING", "COMPLETED"),
    ("outcome -> client has it (publish, record, stream)", "COMPLETED", "COMPLETED received"),
    ("call start -> COMPLETED received (total)", "start", "COMPLETED received"),
]


async def one_job(stub: generate_service_pb2_grpc.GenerateServiceStub) -> dict[str, float]:
    """Marks for one job, in ms after its call started."""
    start = time.time()
    marks = {"start": 0.0}
    request = generate_service_pb2.GenerateRequest(spec=spec(latency_ms=0))
    async for response in stub.Generate(request):
        received = (time.time() - start) * 1e3
        if response.HasField("job"):
            marks["created"] = (response.job.create_time.ToNanoseconds() / 1e9 - start) * 1e3
            continue
        event = response.event
        name = job_pb2.JobState.Name(event.state).removeprefix("JOB_STATE_")
        marks[name] = (event.time.ToNanoseconds() / 1e9 - start) * 1e3
        marks[f"{name} received"] = received
    if "COMPLETED received" not in marks:
        raise SystemExit(f"a job did not complete: {marks}")
    return marks


async def run(router: str, jobs: int, slowest: int) -> None:
    async with grpc.aio.insecure_channel(router) as channel:
        stub = generate_service_pb2_grpc.GenerateServiceStub(channel)
        for _ in range(WARM_UP):
            await one_job(stub)
        samples = [await one_job(stub) for _ in range(jobs)]
    print(f"{jobs} zero-latency jobs, one at a time; p50 and p95 per stage, ms")
    for label, begin, end in STAGES:
        spans = sorted(s[end] - s[begin] for s in samples)
        p95 = spans[int(0.95 * (len(spans) - 1))]
        print(f"  {label:62s} {statistics.median(spans):6.2f} {p95:6.2f}")
    if slowest:
        # The tail: which stage a slow job lost its time in.
        print(f"the {slowest} slowest jobs, each stage in ms (columns as the rows above)")
        tail = sorted(samples, key=lambda s: s["COMPLETED received"])[-slowest:]
        for marks in reversed(tail):
            print("  " + " ".join(f"{marks[end] - marks[begin]:6.2f}" for _, begin, end in STAGES))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", default="127.0.0.1:50051")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--slowest", type=int, default=0, help="also list the N slowest jobs")
    args = parser.parse_args(argv)
    if args.router.rpartition(":")[0].strip("[]") not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the stages need the mesh's clock: run this on its machine, on loopback")
    uvloop.run(run(args.router, args.jobs, args.slowest))


if __name__ == "__main__":
    main()
