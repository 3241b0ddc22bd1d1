"""`python -m gateway` as a real process: starts, answers /healthz, exits 0 on SIGTERM."""

from __future__ import annotations

import httpx

from tests.infra import eventually, free_port
from tests.mesh import start_process, stop_process


async def test_module_serves_health_and_stops_on_sigterm() -> None:
    listen = f"127.0.0.1:{free_port()}"
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
