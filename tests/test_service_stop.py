"""A service run by hand stops on Ctrl-C or SIGTERM even while it is still starting."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.infra import free_port
from tests.mesh import start_process


@pytest.mark.parametrize("module", ["services.router", "services.providers"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_service_waiting_for_nats_at_start_stops_when_signalled(
    module: str, sig: signal.Signals, tmp_path: Path
) -> None:
    # It waits for NATS as long as it takes (a container started before the server), and
    # went on waiting whatever the signal: only SIGKILL stopped it.
    log = tmp_path / "service.log"
    with log.open("wb") as stderr:
        proc = start_process(
            module,
            {
                "GENMESH_NATS_URL": f"nats://127.0.0.1:{free_port()}",
                "GENMESH_DATA_DIR": str(tmp_path),
                "GENMESH_LISTEN": "127.0.0.1:0",
            },
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while "Connection refused" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(sig)
        code = proc.wait(15)
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert "stopped while starting" in text, text
