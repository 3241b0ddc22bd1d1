from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.mesh import Mesh, running_mesh
from tests.prompt.conftest import ollama  # noqa: F401  (a fixture)


@pytest.fixture
async def mesh(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> AsyncIterator[Mesh]:
    """The whole mesh, in-process, with one worker, on SQLite and on PostgreSQL."""
    async with running_mesh(
        nats_url=nats_url, prefix=nats_prefix, database=database, data_dir=tmp_path
    ) as m:
        yield m


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
