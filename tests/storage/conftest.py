"""A real AssetService on a loopback port, backed by the parametrized test database."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from genmesh.v1 import asset_service_pb2, asset_service_pb2_grpc
from services.common.db import Database as Db
from services.common.db import open_database
from services.common.grpc_server import grpc_server
from services.common.tenancy import tenant_metadata
from services.storage.blobs import BlobStore, LocalBlobStore
from services.storage.client import AssetClient
from services.storage.core import AssetStore
from services.storage.schema import assets, metadata
from services.storage.servicer import SERVICE_NAME, AssetServicer
from tests.conftest import Database

# Small enough that the over-limit test is quick, large enough for multi-chunk uploads.
MAX_UPLOAD_BYTES = 1024 * 1024
# Uploads above this are spooled to disk rather than held in memory.
IN_MEMORY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Serving:
    address: str
    channel: grpc.aio.Channel
    client: AssetClient
    store: AssetStore
    engine: Db

    async def row_count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(assets))).scalar_one())


@dataclass(frozen=True)
class Storage(Serving):
    blobs: LocalBlobStore

    def blob_files(self) -> list[Path]:
        """Stored blobs, not counting the staging area."""
        return sorted(
            p
            for p in self.blobs.root.rglob("*")
            if p.is_file() and self.blobs.staging not in p.parents
        )


@pytest.fixture
async def storage(database: Database, tmp_path: Path) -> AsyncIterator[Storage]:
    blobs = LocalBlobStore(tmp_path / "blobs")
    async with serving_storage(database, blobs) as running:
        yield Storage(
            running.address, running.channel, running.client, running.store, running.engine, blobs
        )


@asynccontextmanager
async def serving_storage(database: Database, blobs: BlobStore) -> AsyncIterator[Serving]:
    """An AssetService on a loopback port, its blobs in `blobs`."""
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(
            open_database(database.url, metadata, database.schema)
        )
        store = AssetStore(
            engine, blobs, max_upload_bytes=MAX_UPLOAD_BYTES, in_memory_bytes=IN_MEMORY_BYTES
        )
        registration = (
            asset_service_pb2_grpc.add_AssetServiceServicer_to_server,
            AssetServicer(store),
            SERVICE_NAME,
        )
        running = await stack.enter_async_context(
            grpc_server("127.0.0.1:0", [registration], grace=1.0)
        )
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(running.address))
        yield Serving(running.address, channel, AssetClient(channel), store, engine)


async def download_messages(
    channel: grpc.aio.Channel, asset_id: str, *, tenant: str, offset: int = 0, length: int = 0
) -> tuple[list[asset_service_pb2.DownloadAssetResponse], grpc.aio.AioRpcError | None]:
    """What a DownloadAsset call sends before it ends, and the error it ends with (if any)."""
    call = asset_service_pb2_grpc.AssetServiceStub(channel).DownloadAsset(
        asset_service_pb2.DownloadAssetRequest(asset_id=asset_id, offset=offset, length=length),
        metadata=tenant_metadata(tenant),
    )
    received = []
    try:
        async for message in call:
            received.append(message)
    except grpc.aio.AioRpcError as failed:
        return received, failed
    return received, None


async def cancelled_downloads(
    channel: grpc.aio.Channel, asset_id: str, *, tenant: str, calls: int = 20
) -> None:
    """DownloadAsset calls cancelled at each point in turn, `calls` at once: 0 to 50 ms after
    they start (mostly before their first message), after the metadata, and after one more
    message (the one byte asked for, or a first chunk mid-stream); of one byte and of the
    whole asset."""
    stub = asset_service_pb2_grpc.AssetServiceStub(channel)

    async def cancelled(n: int, length: int, messages: int) -> None:
        call = stub.DownloadAsset(
            asset_service_pb2.DownloadAssetRequest(asset_id=asset_id, length=length),
            metadata=tenant_metadata(tenant),
        )
        if messages == 0:
            await asyncio.sleep(n % 11 * 0.005)
        for _ in range(messages):
            await call.read()
        call.cancel()

    for length in (1, 0):
        for messages in (0, 1, 2):
            await asyncio.gather(*(cancelled(n, length, messages) for n in range(calls)))


@asynccontextmanager
async def busy_threads(workers: int = 32, seconds: float = 0.01) -> AsyncIterator[None]:
    """This loop's default thread pool kept full meanwhile, as a loaded storage's is (probes
    and spools of other uploads, other reads): storage's own calls to it (storage runs in
    this loop here) wait in its queue first. More `workers` than the pool has threads."""
    stop = asyncio.Event()

    async def occupy() -> None:
        while not stop.is_set():
            await asyncio.to_thread(time.sleep, seconds)

    occupying = [asyncio.create_task(occupy()) for _ in range(workers)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*occupying)


@contextmanager
def resource_warnings() -> Iterator[list[str]]:
    """The ResourceWarnings (a file or socket collected unclosed) raised meanwhile, recorded
    rather than raised: one raised in a finalizer would reach sys.unraisablehook only."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        said: list[str] = []
        yield said
        gc.collect()  # what only a reference cycle still holds, now rather than in a later test
        said += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


class StorageProcess:
    """`python -m services.storage` running, with what it has written to stderr so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        self._proc = proc
        self._stderr = proc.stderr
        self.lines: list[str] = []
        self.address = ""

    async def started(self) -> None:
        """Read stderr until the service logs where it listens."""
        while line := (await self._stderr.readline()).decode():
            self.lines.append(line.rstrip())
            if match := re.search(r"listening on (\S+:\d+)", line):
                self.address = match[1]
                return
        raise AssertionError("storage exited before listening:\n" + "\n".join(self.lines))

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig`; its exit status once it has gone, with the rest of its stderr read."""
        self._proc.send_signal(sig)
        self.lines += (await asyncio.wait_for(self._stderr.read(), 30)).decode().splitlines()
        return await asyncio.wait_for(self._proc.wait(), 30)


@asynccontextmanager
async def storage_process(settings: dict[str, str]) -> AsyncIterator[StorageProcess]:
    """Storage as its own process on a free port, with this environment less its GENMESH_*
    plus `settings`; killed on the way out if still running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENMESH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.storage",
        env=env | {"GENMESH_LISTEN": "127.0.0.1:0", **settings},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    running = StorageProcess(proc)
    try:
        await asyncio.wait_for(running.started(), 30)
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
