"""Publishing a job while NATS is out of reach."""

from __future__ import annotations

from pathlib import Path

import nats.errors
import pytest

from genmesh.v1 import job_pb2
from services.common.bus import UNCONFIRMED, Bus, connect
from services.common.db import open_database
from services.router.dispatch import Dispatcher
from services.router.store import JobStore, metadata
from tests.infra import eventually, private_nats, unique


async def test_a_publish_while_nats_reconnects_fails_at_once_rather_than_timing_out(
    tmp_path: Path,
) -> None:
    with private_nats(tmp_path / "nats") as server:
        await server.start()
        async with (
            connect(server.url, "test-dispatch") as nc,
            open_database(f"sqlite:///{tmp_path / 'jobs.db'}", metadata) as engine,
        ):
            # A publish that waits gets a minute: without the check it would hang the test.
            js = nc.jetstream(timeout=60.0)
            bus = Bus(unique("t"))
            await bus.ensure_streams(js)
            dispatcher = Dispatcher(js, bus, JobStore(engine), connected=lambda: nc.is_connected)
            job = job_pb2.Job(id="j_1", provider="sandbox")
            assert await dispatcher.dispatch(job) == 1

            await server.kill()
            await eventually(lambda: not nc.is_connected)
            with pytest.raises(nats.errors.ConnectionReconnectingError) as raised:
                await dispatcher.dispatch(job_pb2.Job(id="j_2", provider="sandbox"))
            # The admission gate holds a job whose publish failed this way and sends it again.
            assert isinstance(raised.value, UNCONFIRMED)

            await server.start()
            await eventually(lambda: nc.is_connected, within=15)
            assert await dispatcher.dispatch(job_pb2.Job(id="j_2", provider="sandbox")) == 2
