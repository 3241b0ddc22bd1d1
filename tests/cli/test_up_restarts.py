"""`genmesh up` restarts a process that dies, within a budget, and stops past it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from genmesh_cli.restarts import FIRST_DELAY, MAX_DELAY, WINDOW, RestartBudget
from tests.cli.test_cli import (
    Up,
    alive,
    children_of,
    clean_env,
    command_line,
    genmesh_up,
    log_tails,
    run_cli,
)
from tests.infra import eventually


def test_restart_delays_double_up_to_the_limit_and_recover_after_the_window() -> None:
    now = [0.0]
    budget = RestartBudget(limit=6, clock=lambda: now[0])
    delays = [budget.next_delay("worker") for _ in range(6)]
    assert delays == [FIRST_DELAY, 1.0, 2.0, 4.0, MAX_DELAY, MAX_DELAY]
    assert budget.next_delay("worker") is None
    # Another child has its own budget.
    assert budget.next_delay("storage") == FIRST_DELAY
    now[0] = WINDOW + 1
    assert budget.next_delay("worker") == FIRST_DELAY


def test_no_restarts_means_the_first_exit_stops() -> None:
    assert RestartBudget(limit=0).next_delay("worker") is None


def worker_pid(up: Up) -> int:
    """The pid of `up`'s provider worker now."""
    found = [
        pid
        for pid in children_of(up.process.pid)
        if alive(pid) and "services.providers" in command_line(pid)
    ]
    assert len(found) == 1, found
    return found[0]


async def generate(up: Up, tmp_path: Path) -> None:
    code, out, err = await run_cli(
        "generate",
        "--task",
        "text-to-image",
        "a fox",
        "--router",
        up.router,
        "--storage",
        up.storage,
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert code == 0, f"{out}\n{err}\n{log_tails(up.data_dir)}"


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_killed_processes_are_restarted_and_past_the_budget_up_stops(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "data")
    async with genmesh_up(tmp_path, env, ["--restarts", "1"]) as up:
        first = worker_pid(up)
        os.kill(first, signal.SIGKILL)

        await eventually(lambda: "worker is back" in up.errors.read_text(), within=60)
        said = up.errors.read_text()
        assert "worker was killed by SIGKILL while the mesh ran" in said, said
        assert "restarting worker" in said, said
        second = worker_pid(up)
        assert second != first
        # The mesh works with the new worker; the log kept the first run's lines.
        await generate(up, tmp_path)
        log_path = up.data_dir / "logs" / "worker.log"
        assert "--- genmesh up: worker was killed by SIGKILL; restarted ---" in log_path.read_text()

        # So is its private nats-server, every service reconnecting to the new one.
        nats = [p for p in up.pids if "nats-server" in command_line(p)]
        assert len(nats) == 1
        os.kill(nats[0], signal.SIGKILL)
        await eventually(lambda: "nats is back" in up.errors.read_text(), within=60)
        await generate(up, tmp_path)

        os.kill(second, signal.SIGKILL)
        assert await asyncio.wait_for(up.process.wait(), 60) == 1
        said = up.errors.read_text()
        assert "worker exited 2 time(s) within 60 s; stopping genmesh" in said, said
        # The log tail shown is the dying run's own: not the run before it, nor up's marker.
        runs = re.findall(r"worker (\w+) serving", log_path.read_text())
        assert len(runs) == 2, runs
        last = said.rsplit("worker was killed by SIGKILL while the mesh ran", 1)[1]
        assert runs[1] in last, last
        assert runs[0] not in last, last
        assert "restarted ---" not in last, last
        assert [pid for pid in [*up.pids, second] if alive(pid)] == []


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_restart_that_fails_stops_the_mesh_in_order(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "data")
    async with genmesh_up(tmp_path, env) as up:
        worker = worker_pid(up)
        # Nowhere to write its log: the restart cannot start it.
        shutil.rmtree(up.data_dir / "logs")
        os.kill(worker, signal.SIGKILL)
        assert await asyncio.wait_for(up.process.wait(), 60) == 1
        said = up.errors.read_text()
        assert "could not restart worker" in said, said
        # Stopped in order, as at any other stop, not by the children's parent-death signal.
        assert "genmesh stopped" in said, said
        assert "Traceback" not in said, said
        assert [pid for pid in up.pids if alive(pid)] == []
