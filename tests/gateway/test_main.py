"""`python -m gateway` as a real process: starts, answers /healthz, exits 0 on SIGTERM, and
runs on the event loop GENMESH_EVENT_LOOP names."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.infra import eventually, free_port
from tests.mesh import ROOT, start_process, stop_process


async def test_module_serves_health_and_stops_on_sigterm(held_port: int) -> None:
    listen = f"127.0.0.1:{held_port}"
    # No mesh: the bridge starts without its upstreams (channels connect lazily).
    proc = start_process(
        "gateway",
        {
            "GENMESH_LISTEN": listen,
            "GENMESH_ROUTER_ADDR": f"127.0.0.1:{free_port()}",
            "GENMESH_LOG_LEVEL": "WARNING",
        },
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://{listen}", trust_env=False) as http:

            async def healthy() -> bool:
                try:
                    return (await http.get("/healthz")).json() == {"status": "ok"}
                except httpx.TransportError:
                    return False

            await eventually(healthy, within=20)
            unavailable = await http.get("/v1/providers")
            assert unavailable.status_code == 503
            assert unavailable.json()["error"]["code"] == "UNAVAILABLE"
    finally:
        code = await stop_process(proc)
    assert code == 0


# Runs the module's main() as `python -m gateway` would, with its server's serve() replaced by
# one that prints the running loop's class and returns, so main() ends at once.
_SHOW_LOOP = """
import asyncio
import gateway.__main__ as main_module

async def serve(self, sockets=None):
    print(type(asyncio.get_running_loop()).__module__)

main_module._Server.serve = serve
main_module.main()
"""


@pytest.mark.parametrize(("setting", "module"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_module_runs_on_the_event_loop_the_settings_name(setting: str | None, module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    env["GENMESH_LISTEN"] = f"127.0.0.1:{free_port()}"
    env["GENMESH_LOG_LEVEL"] = "WARNING"
    if setting is not None:
        env["GENMESH_EVENT_LOOP"] = setting
    done = subprocess.run(
        [sys.executable, "-c", _SHOW_LOOP],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # uvloop.Loop, or asyncio's own (asyncio.unix_events' loop).
    assert done.stdout.strip().split(".")[0] == module
