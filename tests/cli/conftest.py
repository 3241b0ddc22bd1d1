"""The running mesh the e2e tests use, for the commands that need one, and one whose router
is a process of its own, for tests that kill it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.e2e.conftest import mesh  # noqa: F401  (a fixture)
from tests.mesh import Mesh, running_mesh


@pytest.fixture
async def router_process_mesh(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> AsyncIterator[Mesh]:
    """The mesh with its router in a subprocess (mesh.router_proc), to kill and start again."""
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        router_in_process=False,
    ) as m:
        yield m
