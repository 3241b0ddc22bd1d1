"""WebSocket fan-out through the HTTP bridge: N concurrent watchers, each of one job, must each
receive every event of its job exactly once, in order; prints the delivery rate.

Drives a **running** bridge (`genmesh up`) over loopback only; never starts or changes it.

    .venv/bin/python bench/ws_watchers.py --url http://127.0.0.1:8080 --watchers 500
    .venv/bin/python bench/ws_watchers.py --same-job      # all watchers on one job

Each job is `sandbox` text-to-image, 64x64, with `latency_ms` and `steps` progress reports
(so steps + 3 or 4 events: QUEUED, PROCESSING, the reports, maybe PREVIEW_READY, COMPLETED).
Exit status 1 when any watcher missed, repeated or reordered an event.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TERMINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


@dataclass
class Watch:
    job_id: str
    sequences: list[int] = field(default_factory=list)
    close_code: int = 0
    error: str = ""
    opened: float = 0.0
    closed: float = 0.0


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        sys.exit(f"refusing {url}: the benchmark only talks to loopback")
    return url.rstrip("/")


async def submit(http: httpx.AsyncClient, latency_ms: int, steps: int) -> str:
    body = {
        "task": "text-to-image",
        "prompt": "a bench fox",
        "provider": "sandbox",
        "parameters": {"latency_ms": latency_ms, "steps": steps, "width": 64, "height": 64},
    }
    response = await http.post("/v1/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


async def watch(ws_base: str, watch: Watch, start: asyncio.Event) -> None:
    await start.wait()
    watch.opened = time.monotonic()
    try:
        async with connect(
            f"{ws_base}/v1/jobs/{watch.job_id}/ws", proxy=None, open_timeout=60, max_queue=None
        ) as ws:
            while True:
                try:
                    message = json.loads(await ws.recv())
                except ConnectionClosed as closed:
                    watch.close_code = closed.rcvd.code if closed.rcvd else 1006
                    break
                if "event" in message:
                    watch.sequences.append(int(message["event"]["sequence"]))
                elif "error" in message:
                    watch.error = message["error"]["message"]
    except Exception as exc:  # one watcher's failure is a finding, not a crash
        watch.error = f"{type(exc).__name__}: {exc}"
    watch.closed = time.monotonic()


async def run(args: argparse.Namespace) -> int:
    base = loopback_only(args.url)
    ws_base = base.replace("http://", "ws://", 1)
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=60, limits=limits) as http:
        jobs_needed = 1 if args.same_job else args.watchers
        print(f"submitting {jobs_needed} job(s) of {args.latency_ms} ms, {args.steps} steps …")
        gate = asyncio.Semaphore(32)

        async def one() -> str:
            async with gate:
                return await submit(http, args.latency_ms, args.steps)

        job_ids = await asyncio.gather(*(one() for _ in range(jobs_needed)))
        watches = [Watch(job_ids[0 if args.same_job else i]) for i in range(args.watchers)]
        start = asyncio.Event()
        tasks = [asyncio.create_task(watch(ws_base, w, start)) for w in watches]
        began = time.monotonic()
        start.set()
        await asyncio.gather(*tasks)
        wall = time.monotonic() - began

        # The truth: each job's last sequence as the router recorded it.
        finals = {}
        for job_id in set(job_ids):
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
            finals[job_id] = (int(job["last_sequence"]), job["state"])

    exact = 0
    problems: dict[str, int] = {}
    for w in watches:
        last, state = finals[w.job_id]
        if w.sequences == list(range(1, last + 1)) and state in TERMINAL and w.close_code == 1000:
            exact += 1
            continue
        if w.error:
            reason = f"error: {w.error[:80]}"
        elif len(set(w.sequences)) != len(w.sequences):
            reason = "an event twice"
        elif w.sequences != sorted(w.sequences):
            reason = "out of order"
        elif len(w.sequences) < last:
            reason = "missed events"
        else:
            reason = f"closed with {w.close_code}, job {state}"
        problems[reason] = problems.get(reason, 0) + 1

    delivered = sum(len(w.sequences) for w in watches)
    expected = sum(finals[w.job_id][0] for w in watches)
    print()
    shape = "one shared job" if args.same_job else "one job each"
    print(f"watchers                 {len(watches)} ({shape})")
    print(f"events expected          {expected}")
    print(f"events delivered         {delivered}")
    print(f"exactly once, in order   {exact}/{len(watches)} watchers")
    print(f"wall time                {wall:.2f} s (first connect → last close)")
    print(f"delivery rate            {delivered / wall:,.0f} events/s")
    for reason, count in sorted(problems.items(), key=lambda kv: -kv[1]):
        print(f"  {count} x {reason}")
    return 0 if exact == len(watches) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the bridge (loopback)")
    parser.add_argument("--watchers", type=int, default=500)
    parser.add_argument("--latency-ms", type=int, default=3000, help="each job's running time")
    parser.add_argument("--steps", type=int, default=20, help="progress events per job")
    parser.add_argument("--same-job", action="store_true", help="every watcher on one job")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
