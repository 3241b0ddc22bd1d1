"""Builds a running AssetService from settings: database, blob store, gRPC server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from genmesh.v1 import asset_service_pb2_grpc
from services.common.db import database_url, open_database
from services.common.grpc_server import RunningServer, grpc_server
from services.storage.blobs import LocalBlobStore
from services.storage.core import AssetStore
from services.storage.schema import metadata
from services.storage.servicer import SERVICE_NAME, AssetServicer
from services.storage.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_storage(settings: Settings) -> AsyncIterator[RunningServer]:
    """Serve AssetService; on exit health goes NOT_SERVING, the server stops, the DB closes."""
    async with AsyncExitStack() as stack:
        url = database_url(settings.database_url, settings.data_dir, "storage.db")
        engine = await stack.enter_async_context(
            open_database(url, metadata, settings.database_schema)
        )
        blob_root = (
            Path(settings.storage_dir) if settings.storage_dir else settings.data_dir / "blobs"
        )
        store = AssetStore(
            engine, LocalBlobStore(blob_root), max_upload_bytes=settings.storage_max_upload_bytes
        )
        server = await stack.enter_async_context(
            grpc_server(
                settings.listen,
                [
                    (
                        asset_service_pb2_grpc.add_AssetServiceServicer_to_server,
                        AssetServicer(store),
                        SERVICE_NAME,
                    )
                ],
                grace=settings.shutdown_grace,
            )
        )
        host = settings.listen.rpartition(":")[0]
        # The real port matters when listen ends in :0 (tests and supervisors read it here).
        log.info("storage listening on %s:%d (blobs in %s)", host, server.port, blob_root)
        yield server
        log.info("storage stopping")
