"""AssetStore: uploads, metadata and ranged reads, independent of any transport."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import RowMapping, insert, select
from sqlalchemy.exc import IntegrityError

from genmesh.v1 import asset_pb2
from services.common.db import Database
from services.common.errors import DataLoss, InvalidArgument, NotFound, OutOfRange, TooLarge
from services.common.group_commit import GroupCommit
from services.common.prepared import Prepared
from services.common.tenancy import MAX_TENANT
from services.common.text import check_text, findable
from services.storage.blobs import BlobMissing, BlobStore, ThreadFile, settled
from services.storage.limits import PUT_LIMIT
from services.storage.probe import MediaInfo, normalize_media_type, probe_file
from services.storage.schema import assets

log = logging.getLogger(__name__)
# Built once: building a statement and its cache key costs more than running it.
_INSERT_ASSETS = Prepared(insert(assets))

# Bytes gathered from the stream before one write (and hash update) runs in a thread.
WRITE_BLOCK = 256 * 1024
# Uploads up to this size are handled in memory (most job outputs and every preview), so
# is any PutAsset.
SMALL_UPLOAD = PUT_LIMIT
# In-memory bytes up to this size are hashed and probed on the event loop; larger ones in a
# thread, so a big image does not stall every other call.
INLINE_MEASURE = 64 * 1024

MAX_FILENAME = 1024
MAX_JOB_ID = 128
MAX_IDEMPOTENCY_KEY = 256
MAX_ASSET_ID = 64

_ROLES = frozenset(asset_pb2.AssetRole.values())


@dataclass(frozen=True)
class NewAsset:
    """What the uploader says about its bytes; the rest is measured."""

    media_type: str = ""
    filename: str = ""
    role: int = asset_pb2.ASSET_ROLE_UNSPECIFIED
    job_id: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True)
class Asset:
    id: str
    tenant_id: str
    media_type: str
    size_bytes: int
    sha256: str
    width: int
    height: int
    duration_seconds: float
    filename: str
    role: int
    job_id: str
    blob_key: str
    create_time: datetime


class Chunks:
    """A blob's chunks, the first read already: the blob was found before anything is sent.
    aclose() ends the read however far it got."""

    def __init__(self, first: bytes | None, rest: AsyncGenerator[bytes, None]) -> None:
        self._first = first
        self._rest = rest

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        self._first = None
        await self._rest.aclose()


@dataclass(frozen=True)
class Download:
    """An asset and its bytes [offset, offset + length) as chunks; aclose() them if abandoned."""

    asset: Asset
    offset: int
    length: int
    chunks: Chunks


@dataclass(frozen=True)
class _Spooled:
    path: Path
    size: int
    sha256: str


def new_asset_id() -> str:
    return "a_" + uuid.uuid4().hex


class AssetStore:
    """Asset rows in SQL, bytes in a BlobStore; every call is scoped to a tenant."""

    def __init__(
        self,
        engine: Database,
        blobs: BlobStore,
        *,
        max_upload_bytes: int,
        in_memory_bytes: int = SMALL_UPLOAD,
    ) -> None:
        self._engine = engine
        self._blobs = blobs
        self._max_upload_bytes = max_upload_bytes
        self._in_memory_bytes = min(in_memory_bytes, max_upload_bytes)
        # Per-hash locks: putting a blob and inserting its row must not interleave with
        # discarding an unreferenced blob of the same hash (blobs are shared by content).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Concurrent uploads' rows share one transaction.
        self._rows: GroupCommit[dict[str, Any]] = GroupCommit(self._insert_rows)

    async def upload(self, tenant: str, meta: NewAsset, chunks: AsyncIterable[bytes]) -> Asset:
        """Store the streamed bytes as a new asset, or return the asset already under the key.

        InvalidArgument for bad metadata or no bytes; TooLarge (RESOURCE_EXHAUSTED, with its
        reason) past the size limit. Nothing is kept from a failed upload.
        """
        media_type, key = _checked(tenant, meta)
        stream = aiter(chunks)
        head, complete = await _read_up_to(stream, self._in_memory_bytes)
        if complete:
            return await self._store_bytes(tenant, meta, media_type, key, b"".join(head))
        return await self._store_stream(tenant, meta, media_type, key, _chain(head, stream))

    async def upload_bytes(self, tenant: str, meta: NewAsset, data: bytes) -> Asset:
        """upload() for bytes already in memory, with the same results and errors."""
        media_type, key = _checked(tenant, meta)
        if len(data) <= self._in_memory_bytes:
            return await self._store_bytes(tenant, meta, media_type, key, data)
        return await self._store_stream(tenant, meta, media_type, key, _chain([data]))

    async def _store_bytes(
        self, tenant: str, meta: NewAsset, media_type: str, key: str | None, data: bytes
    ) -> Asset:
        # Whole in memory: a repeat under a taken key is caught by the unique constraint
        # instead of a query.
        if not data:
            raise InvalidArgument("upload has no bytes")
        if len(data) > INLINE_MEASURE:
            sha256, info = await asyncio.to_thread(_measure, data, media_type)
        else:
            # Most job outputs: cheaper measured here than worth a thread hop.
            sha256, info = _measure(data, media_type)
        return await self._commit(
            tenant, meta, key, info, len(data), sha256, partial(self._blobs.put_bytes, data)
        )

    async def _store_stream(
        self,
        tenant: str,
        meta: NewAsset,
        media_type: str,
        key: str | None,
        chunks: AsyncIterable[bytes],
    ) -> Asset:
        if key is not None:
            existing = await self._find_by_key(tenant, key)
            if existing is not None:
                # A repeat, e.g. from a redelivered job: the first upload stands, unread bytes
                # and all.
                return existing
        spooled = await self._spool(chunks)
        try:
            info = await asyncio.to_thread(probe_file, spooled.path, media_type)
            return await self._commit(
                tenant,
                meta,
                key,
                info,
                spooled.size,
                spooled.sha256,
                partial(self._blobs.put, spooled.path),
            )
        finally:
            # put() consumed the file on success; otherwise it goes now, even if this await
            # is cancelled (settled: a cancelled await would withdraw a queued unlink).
            await settled(asyncio.to_thread(spooled.path.unlink, missing_ok=True))

    async def _insert_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(_INSERT_ASSETS, list(rows))

    async def _commit(
        self,
        tenant: str,
        meta: NewAsset,
        key: str | None,
        info: MediaInfo,
        size: int,
        sha256: str,
        put: Callable[[str], Awaitable[str]],
    ) -> Asset:
        """Put the blob, then insert its row; a lost race under the same key yields the winner."""
        async with self._lock(sha256):
            blob_key = await put(sha256)
            asset = Asset(
                id=new_asset_id(),
                tenant_id=tenant,
                media_type=info.media_type,
                size_bytes=size,
                sha256=sha256,
                width=info.width,
                height=info.height,
                duration_seconds=info.duration_seconds,
                filename=meta.filename,
                role=meta.role,
                job_id=meta.job_id,
                blob_key=blob_key,
                create_time=datetime.now(UTC),
            )
            try:
                await self._rows.submit(_row(asset, key))
            except IntegrityError:
                winner = await self._find_by_key(tenant, key) if key else None
                if winner is None:
                    raise
                # A repeat, or a race with a concurrent upload under the same key: the first
                # one stands.
                log.debug("upload under key %r is a repeat of %s", key, winner.id)
                if winner.blob_key != blob_key:
                    await self._discard_if_unused(blob_key)
                return winner
            except BaseException:
                # No row, so no blob either; the check spares a blob other rows share.
                with contextlib.suppress(Exception):
                    await self._discard_if_unused(blob_key)
                raise
            return asset

    async def get(self, tenant: str, asset_id: str) -> Asset:
        """The asset, or NotFound when it does not exist or belongs to another tenant."""
        if not asset_id:
            raise InvalidArgument("asset_id is required")
        if findable(asset_id, MAX_ASSET_ID):
            async with self._engine.connect() as conn:
                result = await conn.execute(
                    select(assets).where(assets.c.id == asset_id, assets.c.tenant_id == tenant)
                )
                row = result.mappings().first()
            if row is not None:
                return _asset(row)
        raise NotFound(f"asset {asset_id[:MAX_ASSET_ID]!r} not found")

    async def open_range(
        self, tenant: str, asset_id: str, offset: int = 0, length: int = 0
    ) -> Download:
        """At most `length` bytes (0: all) from `offset`; OutOfRange when offset > size;
        DataLoss when the asset's blob is gone, found out before any byte is handed over."""
        if offset < 0 or length < 0:
            raise InvalidArgument("offset and length must not be negative")
        asset = await self.get(tenant, asset_id)
        if offset > asset.size_bytes:
            raise OutOfRange(f"offset {offset} is past the end ({asset.size_bytes} bytes)")
        available = asset.size_bytes - offset
        count = available if length == 0 else min(length, available)
        rest = self._blobs.read(asset.blob_key, offset, count)
        # The first read opens the blob: a missing one must fail the call before its
        # metadata is sent (and the bridge has answered 200), not halfway through the body.
        try:
            first = await anext(rest, None)
        except BlobMissing as exc:
            log.error("asset %s: its blob %s is missing from the blob store", asset.id, exc)
            raise DataLoss(
                f"the bytes of asset {asset.id} are missing from storage; it cannot be read"
            ) from exc
        except BaseException:
            await rest.aclose()
            raise
        return Download(asset, offset, count, Chunks(first, rest))

    def _lock(self, sha256: str) -> asyncio.Lock:
        lock = self._locks.get(sha256)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[sha256] = lock
        return lock

    async def _spool(self, chunks: AsyncIterable[bytes]) -> _Spooled:
        spool = ThreadFile(self._blobs.temp_path(), "xb")
        try:
            digest = hashlib.sha256()
            size = 0
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in chunks:
                size += len(chunk)
                # Checked as bytes arrive, so an oversized upload never fills the disk.
                if size > self._max_upload_bytes:
                    raise TooLarge(f"upload is over the limit of {self._max_upload_bytes} bytes")
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_BLOCK:
                    await spool.run(partial(_write, digest, pending))
                    pending, pending_size = [], 0
            if pending:
                await spool.run(partial(_write, digest, pending))
            if size == 0:
                raise InvalidArgument("upload has no bytes")
            await spool.aclose()
            return _Spooled(spool.path, size, digest.hexdigest())
        except BaseException:
            # Failed, over the limit or cancelled: the partial file must not outlive the call.
            await spool.aclose(unlink=True)
            raise

    async def _find_by_key(self, tenant: str, key: str) -> Asset | None:
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(assets).where(assets.c.tenant_id == tenant, assets.c.idempotency_key == key)
            )
            row = result.mappings().first()
        return None if row is None else _asset(row)

    async def _discard_if_unused(self, blob_key: str) -> None:
        """Delete a blob no row points at, when this process alone writes the blobs (see
        BlobStore.exclusive). Call it holding the lock of the blob's hash."""
        if not self._blobs.exclusive:
            return
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(assets.c.id).where(assets.c.blob_key == blob_key).limit(1)
            )
            used = result.first() is not None
        if not used:
            await self._blobs.delete(blob_key)


async def _read_up_to(stream: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """Chunks until more than `limit` bytes arrived or the stream ended (then True)."""
    head: list[bytes] = []
    size = 0
    async for chunk in stream:
        head.append(chunk)
        size += len(chunk)
        if size > limit:
            return head, False
    return head, True


async def _chain(
    head: list[bytes], rest: AsyncIterator[bytes] | None = None
) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    if rest is not None:
        async for chunk in rest:
            yield chunk


def _checked(tenant: str, meta: NewAsset) -> tuple[str, str | None]:
    """The normalized media type and the idempotency key (None when absent) of valid metadata;
    InvalidArgument otherwise."""
    check_text("tenant", tenant, MAX_TENANT, required=True)
    media_type = normalize_media_type(meta.media_type)
    check_text("filename", meta.filename, MAX_FILENAME)
    check_text("job_id", meta.job_id, MAX_JOB_ID)
    check_text("idempotency_key", meta.idempotency_key, MAX_IDEMPOTENCY_KEY)
    if meta.role not in _ROLES:
        raise InvalidArgument(f"unknown asset role {meta.role}")
    return media_type, meta.idempotency_key or None


def _measure(data: bytes, media_type: str) -> tuple[str, MediaInfo]:
    return hashlib.sha256(data).hexdigest(), probe_file(data, media_type)


def _write(digest: Any, pending: list[bytes], f: BinaryIO) -> None:
    data = b"".join(pending)
    f.write(data)
    digest.update(data)


def _row(asset: Asset, idempotency_key: str | None) -> dict[str, Any]:
    return {
        "id": asset.id,
        "tenant_id": asset.tenant_id,
        "media_type": asset.media_type,
        "size_bytes": asset.size_bytes,
        "sha256": asset.sha256,
        "width": asset.width,
        "height": asset.height,
        "duration_seconds": asset.duration_seconds,
        "filename": asset.filename,
        "role": asset.role,
        "job_id": asset.job_id,
        "idempotency_key": idempotency_key,
        "blob_key": asset.blob_key,
        "create_time": asset.create_time,
    }


def _asset(row: RowMapping) -> Asset:
    create_time: datetime = row["create_time"]
    if create_time.tzinfo is None:
        # SQLite keeps no offset; every time written here is UTC.
        create_time = create_time.replace(tzinfo=UTC)
    return Asset(
        id=row["id"],
        tenant_id=row["tenant_id"],
        media_type=row["media_type"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        width=row["width"],
        height=row["height"],
        duration_seconds=row["duration_seconds"],
        filename=row["filename"],
        role=row["role"],
        job_id=row["job_id"],
        blob_key=row["blob_key"],
        create_time=create_time,
    )
