"""AssetClient: typed async uploads and downloads against the AssetService."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Iterator
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from genmesh.v1 import asset_pb2, asset_service_pb2, asset_service_pb2_grpc
from services.common.channels import within
from services.common.tenancy import tenant_metadata
from services.storage.blobs import ThreadFile
from services.storage.limits import PUT_LIMIT
from services.storage.put_batcher import PutBatcher

CHUNK_SIZE = 64 * 1024
# Bytes gathered before one file write runs in a thread.
WRITE_BLOCK = 1024 * 1024

T = TypeVar("T")


class DownloadError(Exception):
    """The bytes received do not match the asset (a broken stream or a corrupt blob)."""


class AssetStream:
    """An open download: `asset` is known, the bytes follow by iterating; cancel() to stop."""

    def __init__(
        self,
        asset: asset_pb2.Asset,
        call: grpc.aio.UnaryStreamCall[Any, asset_service_pb2.DownloadAssetResponse],
        timeout: float | None = None,
    ) -> None:
        self.asset = asset
        self._call = call
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                response = await _step(self._call, self._call.read(), self._timeout)
                if response is grpc.aio.EOF:
                    return
                assert isinstance(response, asset_service_pb2.DownloadAssetResponse)
                if response.WhichOneof("part") != "chunk":
                    raise DownloadError("the server sent metadata after the first message")
                yield response.chunk
        finally:
            # Leaving early (break, error, cancellation) must not leave the call open.
            self._call.cancel()

    def cancel(self) -> None:
        self._call.cancel()


class AssetClient:
    """AssetService calls acting for a tenant. RPC failures raise grpc.aio.AioRpcError.

    `timeout` bounds each unary call, and each step of a stream (storage accepting a chunk,
    sending the next, answering): a whole stream takes as long as its size and pace need."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = None) -> None:
        self._stub = asset_service_pb2_grpc.AssetServiceStub(channel)
        self._timeout = timeout
        self._puts = PutBatcher(self._stub, timeout)

    async def upload(
        self,
        data: bytes | AsyncIterable[bytes],
        *,
        tenant: str,
        media_type: str,
        filename: str = "",
        role: asset_pb2.AssetRole.ValueType = asset_pb2.ASSET_ROLE_INPUT,
        job_id: str = "",
        idempotency_key: str = "",
    ) -> asset_pb2.Asset:
        """Upload bytes (or a stream of them) and return the stored asset.

        media_type "" lets the service sniff it; the same idempotency_key returns the first asset.
        """
        metadata = asset_service_pb2.UploadMetadata(
            media_type=media_type,
            filename=filename,
            role=role,
            job_id=job_id,
            idempotency_key=idempotency_key,
        )
        if isinstance(data, bytes) and len(data) <= PUT_LIMIT:
            # Most job outputs: a unary call (shared with concurrent puts) costs both ends
            # far less than a stream.
            return await self._puts.put(
                tenant, asset_service_pb2.PutAssetRequest(metadata=metadata, data=data)
            )
        call = self._stub.UploadAsset(metadata=tenant_metadata(tenant))
        try:
            # Written here rather than handed to gRPC as an iterator, which would swallow the
            # data source's own error (a refusal, a read failure) into a CANCELLED call.
            async with aclosing(_upload_requests(metadata, data)) as requests:
                async for request in requests:
                    if call.done():
                        break  # storage has answered already: awaiting the call gives it
                    answered = await _written(call, call.write(request), self._timeout)
                    if answered is not None:
                        return answered.asset
            answered = await _written(call, call.done_writing(), self._timeout)
            response: asset_service_pb2.UploadAssetResponse = (
                answered if answered is not None else await _step(call, call, self._timeout)
            )
        except BaseException:
            call.cancel()  # storage discards what it received
            raise
        return response.asset

    async def upload_file(
        self,
        path: Path,
        *,
        tenant: str,
        media_type: str = "",
        filename: str | None = None,
        role: asset_pb2.AssetRole.ValueType = asset_pb2.ASSET_ROLE_INPUT,
        job_id: str = "",
        idempotency_key: str = "",
    ) -> asset_pb2.Asset:
        """Upload a file from disk; the filename defaults to the file's name."""
        # Closed here: an upload answered before the end leaves the file part read.
        async with aclosing(_read_file(path)) as blocks:
            return await self.upload(
                blocks,
                tenant=tenant,
                media_type=media_type,
                filename=path.name if filename is None else filename,
                role=role,
                job_id=job_id,
                idempotency_key=idempotency_key,
            )

    async def put(
        self, request: asset_service_pb2.PutAssetRequest, *, tenant: str
    ) -> asset_pb2.Asset:
        """One PutAsset call as it is (upload() may batch small puts or stream large ones)."""
        response = await self._stub.PutAsset(
            request, metadata=tenant_metadata(tenant), timeout=self._timeout
        )
        return response.asset

    async def batch_put(
        self, request: asset_service_pb2.BatchPutAssetsRequest, *, tenant: str
    ) -> asset_service_pb2.BatchPutAssetsResponse:
        """One BatchPutAssets call as it is: a result per item, an asset or that item's error."""
        response: asset_service_pb2.BatchPutAssetsResponse = await self._stub.BatchPutAssets(
            request, metadata=tenant_metadata(tenant), timeout=self._timeout
        )
        return response

    async def get(self, asset_id: str, *, tenant: str) -> asset_pb2.Asset:
        response = await self._stub.GetAsset(
            asset_service_pb2.GetAssetRequest(asset_id=asset_id),
            metadata=tenant_metadata(tenant),
            timeout=self._timeout,
        )
        return response.asset

    async def open(
        self, asset_id: str, *, tenant: str, offset: int = 0, length: int = 0
    ) -> AssetStream:
        """Start a download: returns once the asset's metadata has arrived."""
        call = self._stub.DownloadAsset(
            asset_service_pb2.DownloadAssetRequest(asset_id=asset_id, offset=offset, length=length),
            metadata=tenant_metadata(tenant),
        )
        try:
            first = await _step(call, call.read(), self._timeout)
            if first is grpc.aio.EOF:
                raise DownloadError("the download ended before the asset's metadata")
            assert isinstance(first, asset_service_pb2.DownloadAssetResponse)
            if first.WhichOneof("part") != "asset":
                raise DownloadError("the first message of a download did not carry the asset")
        except BaseException:
            call.cancel()
            raise
        return AssetStream(first.asset, call, self._timeout)

    async def download(
        self, asset_id: str, *, tenant: str, offset: int = 0, length: int = 0
    ) -> bytes:
        """The asset's bytes (or a range of them); a whole download is checked against sha256."""
        stream = await self.open(asset_id, tenant=tenant, offset=offset, length=length)
        parts = [chunk async for chunk in stream]
        data = b"".join(parts)
        _verify(stream.asset, offset, length, len(data), lambda: hashlib.sha256(data).hexdigest())
        return data

    async def download_to(self, asset_id: str, path: Path, *, tenant: str) -> asset_pb2.Asset:
        """Write the whole asset to `path`, which appears only once complete and verified."""
        stream = await self.open(asset_id, tenant=tenant)
        # A sibling, so the final rename is atomic: `path` never holds a partial download.
        part = ThreadFile(path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part"), "xb")
        try:
            digest = hashlib.sha256()
            size = 0
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in stream:
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_BLOCK:
                    size += await part.run(partial(_write, digest, pending))
                    pending, pending_size = [], 0
            if pending:
                size += await part.run(partial(_write, digest, pending))
            await part.aclose()
            _verify(stream.asset, 0, 0, size, digest.hexdigest)
            await asyncio.to_thread(os.replace, part.path, path)
        except BaseException:
            await part.aclose(unlink=True)
            raise
        return stream.asset


async def _step(call: grpc.aio.Call, step: Awaitable[T], seconds: float | None) -> T:
    return await within(call, step, seconds, "storage")


async def _written(
    call: grpc.aio.StreamUnaryCall, write: Awaitable[None], seconds: float | None
) -> asset_service_pb2.UploadAssetResponse | None:
    """Make one write of an upload: None once written. When it fails because storage has
    ended the call, storage's own answer instead, raised if an error: grpc.aio reports
    such a write as INTERNAL "Internal error from Core". Storage ends an upload early to
    answer a repeat of a known key (with the first asset) and, after reading the rest for
    up to 2 s, to refuse one. Best effort: in a probe of refusals, 3 in 30 had already
    lost their status to that INTERNAL."""
    try:
        await _step(call, write, seconds)
    except grpc.aio.AioRpcError as failed:
        if failed.code() != grpc.StatusCode.INTERNAL:
            raise
        response: asset_service_pb2.UploadAssetResponse = await _step(call, call, seconds)
        return response
    return None


async def _upload_requests(
    metadata: asset_service_pb2.UploadMetadata, data: bytes | AsyncIterable[bytes]
) -> AsyncGenerator[asset_service_pb2.UploadAssetRequest, None]:
    yield asset_service_pb2.UploadAssetRequest(metadata=metadata)
    if isinstance(data, bytes | bytearray | memoryview):
        for chunk in _split(data):
            yield asset_service_pb2.UploadAssetRequest(chunk=chunk)
        return
    async for piece in data:
        # Re-chunk: a caller's large pieces must stay under the message size limit.
        for chunk in _split(piece):
            yield asset_service_pb2.UploadAssetRequest(chunk=chunk)


def _split(data: bytes | bytearray | memoryview) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


async def _read_file(path: Path) -> AsyncGenerator[bytes, None]:
    f = ThreadFile(path, "rb")
    try:
        while block := await f.run(lambda fh: fh.read(WRITE_BLOCK)):
            yield block
    finally:
        await f.aclose()


def _write(digest: Any, pending: list[bytes], f: BinaryIO) -> int:
    data = b"".join(pending)
    f.write(data)
    digest.update(data)
    return len(data)


def _verify(asset: asset_pb2.Asset, offset: int, length: int, received: int, sha256: Any) -> None:
    expected = asset.size_bytes - offset
    if length:
        expected = min(expected, length)
    if received != expected:
        raise DownloadError(f"asset {asset.id}: received {received} bytes, expected {expected}")
    if offset == 0 and received == asset.size_bytes and sha256() != asset.sha256:
        raise DownloadError(f"asset {asset.id}: the bytes do not match its sha256")
