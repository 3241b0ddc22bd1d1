"""Builds a running AssetService from settings: database, blob store, gRPC server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from genmesh.v1 import asset_service_pb2_grpc
from services.common.db import database_url, open_database
from services.common.errors import Unavailable
from services.common.grpc_server import RunningServer, grpc_server
from services.storage.blobs import BlobStore, BlobStoreError, LocalBlobStore, make_writable
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
            open_database(url, metadata, settings.database_schema, sole=True)
        )
        blobs, where = await open_blob_store(settings)
        stack.callback(blobs.close)
        store = AssetStore(engine, blobs, max_upload_bytes=settings.storage_max_upload_bytes)
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
        log.info("storage listening on %s:%d (blobs in %s)", host, server.port, where)
        yield server
        log.info("storage stopping")


async def open_blob_store(settings: Settings) -> tuple[BlobStore, str]:
    """The configured blob backend and where it keeps blobs, for the log. BlobStoreError when
    the bucket is missing or refused: that needs an operator."""
    local_root = Path(settings.storage_dir) if settings.storage_dir else settings.data_dir / "blobs"
    if not settings.storage_s3_bucket:
        local = LocalBlobStore(local_root)
        _writable(settings, local.root, local.staging)
        return local, str(local_root)
    # Imported here: boto3 costs a fraction of a second to import, and only this backend needs it.
    from services.storage.s3_blobs import MAX_OBJECT_BYTES, S3BlobStore

    if settings.storage_max_upload_bytes > MAX_OBJECT_BYTES:
        raise BlobStoreError(
            f"GENMESH_STORAGE_MAX_UPLOAD_BYTES is over {MAX_OBJECT_BYTES:,}, the most one object "
            "store PUT takes"
        )
    # Uploads are spooled on local disk before they go to the bucket whole.
    _writable(settings, local_root / "tmp")
    blobs = S3BlobStore.from_settings(settings, local_root / "tmp")
    where = f"bucket {blobs.bucket!r}" + (
        f" at {settings.storage_s3_endpoint_url}" if settings.storage_s3_endpoint_url else ""
    )
    try:
        await blobs.check()
    except Unavailable:
        # Calls answer UNAVAILABLE until it is back, as they do while the database is away.
        log.warning("the object store for %s did not answer at start-up", where)
    except BaseException:
        blobs.close()
        raise
    return blobs, where


def _writable(settings: Settings, *directories: Path) -> None:
    """BlobStoreError naming the variable behind a directory storage cannot write, and why."""
    variable = "GENMESH_STORAGE_DIR" if settings.storage_dir else "GENMESH_DATA_DIR"
    for directory in directories:
        try:
            make_writable(directory)
        except OSError as error:
            raise BlobStoreError(
                f"{variable}: cannot write to {directory}: {error.strerror or error}"
            ) from None
