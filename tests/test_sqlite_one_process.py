"""A SQLite database serves one router or storage process: a second one on the same file is
refused at start, as two lose each other's updates (nothing serialises their transactions)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.infra import free_port
from tests.mesh import start_process, stop_process, wait_serving
from tests.test_settings_load import start


@pytest.mark.parametrize(
    ("module", "file"), [("services.router", "router.db"), ("services.storage", "storage.db")]
)
async def test_a_second_process_on_a_sqlite_file_is_refused(
    module: str, file: str, nats_url: str, nats_prefix: str, tmp_path: Path
) -> None:
    # It started beside the first, and their transactions (a job's state read, changed and
    # written back as its events were applied) overwrote each other's.
    env = {
        "GENMESH_DATA_DIR": str(tmp_path),
        "GENMESH_NATS_URL": nats_url,
        "GENMESH_NATS_PREFIX": nats_prefix,
    }
    address = f"127.0.0.1:{free_port()}"
    first = start_process(module, {**env, "GENMESH_LISTEN": address})
    try:
        await wait_serving(address)
        second = f"127.0.0.1:{free_port()}"
        lines = await asyncio.to_thread(start, module, **env, GENMESH_LISTEN=second)
    finally:
        assert await stop_process(first) == 0
    said = f"cannot start: another process serves the database {tmp_path / file}: "
    assert said in lines[-1], lines
    assert "use PostgreSQL" in lines[-1], lines
    # Once the first has stopped, another may start on the file.
    again = start_process(module, {**env, "GENMESH_LISTEN": second})
    try:
        await wait_serving(second)
    finally:
        assert await stop_process(again) == 0
