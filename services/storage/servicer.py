"""AssetService over gRPC: translates messages to and from the AssetStore."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from genmesh.v1 import asset_pb2, asset_service_pb2, asset_service_pb2_grpc
from services.common.clock import from_epoch
from services.common.errors import InvalidArgument, MeshError, TooLarge, status_of
from services.common.tenancy import tenant_of
from services.storage.core import Asset, AssetStore, NewAsset
from services.storage.limits import BATCH_PUT_BYTES, BATCH_PUT_ITEMS, PUT_LIMIT

SERVICE_NAME = asset_service_pb2.DESCRIPTOR.services_by_name["AssetService"].full_name
# Seconds the unread rest of a refused upload is still read before the refusal goes out
# (see _drain). Not bounded in bytes: what is read is discarded as it comes, and flow
# control keeps the memory small. A refusal of a large upload may so come this much later.
DRAIN_SECONDS = 2.0


class AssetServicer(asset_service_pb2_grpc.AssetServiceServicer):
    """Thin adapter; errors are MeshErrors mapped to status codes by the server interceptor."""

    def __init__(self, store: AssetStore) -> None:
        self._store = store

    async def UploadAsset(
        self,
        request_iterator: AsyncIterator[asset_service_pb2.UploadAssetRequest],
        context: grpc.aio.ServicerContext,
    ) -> asset_service_pb2.UploadAssetResponse:
        try:
            first = await anext(request_iterator, None)
            if first is None or first.WhichOneof("part") != "metadata":
                raise InvalidArgument("the first message of an upload must carry its metadata")
            asset = await self._store.upload(
                tenant_of(context), _new_asset(first.metadata), _chunks(request_iterator)
            )
        except Exception:
            await _drain(request_iterator)
            raise
        return asset_service_pb2.UploadAssetResponse(asset=to_proto(asset))

    async def PutAsset(
        self, request: asset_service_pb2.PutAssetRequest, context: grpc.aio.ServicerContext
    ) -> asset_service_pb2.PutAssetResponse:
        asset = await self._put(tenant_of(context), request)
        return asset_service_pb2.PutAssetResponse(asset=asset)

    async def BatchPutAssets(
        self, request: asset_service_pb2.BatchPutAssetsRequest, context: grpc.aio.ServicerContext
    ) -> asset_service_pb2.BatchPutAssetsResponse:
        items = request.requests
        if not 1 <= len(items) <= BATCH_PUT_ITEMS:
            raise InvalidArgument(f"a batch holds 1 to {BATCH_PUT_ITEMS} items, not {len(items)}")
        size = sum(len(item.data) for item in items)
        if size > BATCH_PUT_BYTES:
            raise TooLarge(f"a batch carries at most {BATCH_PUT_BYTES:,} bytes, not {size:,}")
        tenant = tenant_of(context)
        # Together, so their rows share one group commit.
        outcomes = await asyncio.gather(
            *(self._put(tenant, item) for item in items), return_exceptions=True
        )
        return asset_service_pb2.BatchPutAssetsResponse(
            results=[_result(outcome) for outcome in outcomes]
        )

    async def _put(
        self, tenant: str, request: asset_service_pb2.PutAssetRequest
    ) -> asset_pb2.Asset:
        if len(request.data) > PUT_LIMIT:
            raise TooLarge(
                f"PutAsset takes at most {PUT_LIMIT:,} bytes, not {len(request.data):,}: "
                "send larger assets with UploadAsset (over HTTP, POST /v1/assets)"
            )
        asset = await self._store.upload_bytes(tenant, _new_asset(request.metadata), request.data)
        return to_proto(asset)

    async def GetAsset(
        self, request: asset_service_pb2.GetAssetRequest, context: grpc.aio.ServicerContext
    ) -> asset_service_pb2.GetAssetResponse:
        asset = await self._store.get(tenant_of(context), request.asset_id)
        return asset_service_pb2.GetAssetResponse(asset=to_proto(asset))

    async def DownloadAsset(
        self, request: asset_service_pb2.DownloadAssetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asset_service_pb2.DownloadAssetResponse]:
        download = await self._store.open_range(
            tenant_of(context), request.asset_id, request.offset, request.length
        )
        # aclosing: a client that hangs up mid-stream still gets the blob file closed.
        async with aclosing(download.chunks) as chunks:
            yield asset_service_pb2.DownloadAssetResponse(asset=to_proto(download.asset))
            async for chunk in chunks:
                yield asset_service_pb2.DownloadAssetResponse(chunk=chunk)


async def _drain(requests: AsyncIterator[asset_service_pb2.UploadAssetRequest]) -> None:
    """Read and discard what the client still sends of a refused upload, for at most
    DRAIN_SECONDS. A grpc.aio client whose write fails because the call has ended reports
    INTERNAL "Internal error from Core" instead of the refusal (about 1 small refusal in
    500, and nearly every one that leaves megabytes unsent)."""
    with contextlib.suppress(Exception):  # TimeoutError, or the stream's own failure
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in requests:
                pass


async def _chunks(
    requests: AsyncIterator[asset_service_pb2.UploadAssetRequest],
) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise InvalidArgument("only the first message of an upload may carry metadata")
        if request.chunk:
            yield request.chunk


def _result(outcome: asset_pb2.Asset | BaseException) -> asset_service_pb2.PutAssetResult:
    if isinstance(outcome, asset_pb2.Asset):
        return asset_service_pb2.PutAssetResult(asset=outcome)
    if not isinstance(outcome, Exception):
        raise outcome  # cancellation: the whole call is going away
    code, message = status_of(outcome, "a BatchPutAssets item")
    reason = outcome.reason if isinstance(outcome, MeshError) else ""
    error = asset_service_pb2.PutAssetError(code=code.value[0], message=message, reason=reason)
    return asset_service_pb2.PutAssetResult(error=error)


def to_proto(asset: Asset) -> asset_pb2.Asset:
    create_time = Timestamp()
    create_time.FromMicroseconds(from_epoch(asset.create_time))
    return asset_pb2.Asset(
        id=asset.id,
        tenant_id=asset.tenant_id,
        media_type=asset.media_type,
        size_bytes=asset.size_bytes,
        sha256=asset.sha256,
        width=asset.width,
        height=asset.height,
        duration_seconds=asset.duration_seconds,
        filename=asset.filename,
        role=asset_pb2.AssetRole.ValueType(asset.role),
        job_id=asset.job_id,
        create_time=create_time,
    )


def _new_asset(meta: asset_service_pb2.UploadMetadata) -> NewAsset:
    return NewAsset(
        media_type=meta.media_type,
        filename=meta.filename,
        role=meta.role,
        job_id=meta.job_id,
        idempotency_key=meta.idempotency_key,
    )
