"""`genmesh up`: run the whole mesh on this machine as supervised child processes.

Start order (each tier health-gated): nats-server, then storage + prompt, then the router,
then the provider worker + the HTTP gateway. Stop order is the reverse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from genmesh_cli.client import CliError, seconds_arg
from genmesh_cli.plan import Plan, make_plan
from genmesh_cli.supervisor import Supervisor
from services.common.locks import exclusive_lock


def add_parser(subparsers: Any, env: Mapping[str, str]) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        help="run the whole mesh on this machine",
        description="Start nats-server (unless GENMESH_NATS_URL is set), storage, prompt, "
        "router, the provider worker and the HTTP gateway; Ctrl-C stops them all.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address services listen on [%(default)s]")
    p.add_argument("--grpc-port", type=port_arg, default=50051, help="router [%(default)s]")
    p.add_argument("--storage-port", type=port_arg, default=50052, help="storage [%(default)s]")
    p.add_argument("--prompt-port", type=port_arg, default=50053, help="prompt [%(default)s]")
    p.add_argument("--http-port", type=port_arg, default=8080, help="gateway [%(default)s]")
    p.add_argument(
        "--worker-port", type=port_arg, default=0, help="worker health endpoint [a free port]"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env.get("GENMESH_DATA_DIR") or ".genmesh"),
        help="databases, blobs, NATS store and logs [GENMESH_DATA_DIR or .genmesh]",
    )
    p.add_argument("--no-gateway", action="store_true", help="do not start the HTTP gateway")
    # Checked as a job's time budgets are: a negative or nan stop timeout killed every
    # process at once, with no graceful stop and no jobs handed back.
    p.add_argument(
        "--start-timeout", type=seconds_arg, default=60.0, help="seconds to become healthy [60]"
    )
    p.add_argument(
        "--stop-timeout", type=seconds_arg, default=10.0, help="seconds per tier to stop [10]"
    )
    p.add_argument(
        "--restarts",
        type=restarts_arg,
        default=5,
        help="times a process that exits on its own is restarted within a minute before "
        "genmesh stops instead (0: stop at the first) [%(default)s]",
    )
    p.set_defaults(run=run)


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def restarts_arg(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {count}")
    return count


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args, args.env)
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(plan.data_dir / "up.lock") as lock_fd:
        _check_ports(plan)
        supervisor = Supervisor(
            plan, args.start_timeout, args.stop_timeout, lock_fd, restarts=args.restarts
        )
        return asyncio.run(supervisor.run())


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[int]:
    """Hold a lock on the data dir: two meshes on one SQLite store and NATS dir corrupt both.
    Yields the locked fd, for the children to inherit: the lock is held until the last of
    them has exited, should the supervisor die first."""
    with exclusive_lock(path) as fd:
        if fd is None:
            raise CliError(
                f"another `genmesh up` (or a process it started) is using {path.parent}; "
                "stop it or set --data-dir"
            )
        yield fd


def _check_ports(plan: Plan) -> None:
    """Fail with a clear line, rather than a child's traceback, when a port is taken."""
    for s in plan.services:
        host, _, port = s.listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as sock:
            # Like the servers: a port in TIME_WAIT is free, one with a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, int(port)))
            except OSError as error:
                why = "is in use" if error.errno == errno.EADDRINUSE else f"fails: {error}"
                raise CliError(
                    f"{s.listen} for {s.name} {why}; is another `genmesh up` running? "
                    "Pick other ports with --grpc-port/--storage-port/--prompt-port/--http-port."
                ) from None
