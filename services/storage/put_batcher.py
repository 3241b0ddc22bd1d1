"""Concurrent small uploads of one tenant, sent together in BatchPutAssets calls."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from genmesh.v1 import asset_pb2, asset_service_pb2, asset_service_pb2_grpc
from services.common.errors import REASON_KEY
from services.common.tenancy import tenant_metadata
from services.storage.limits import BATCH_PUT_BYTES, BATCH_PUT_ITEMS

_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class _Put:
    request: asset_service_pb2.PutAssetRequest
    done: asyncio.Future[asset_pb2.Asset]


class PutBatcher:
    """A put goes out at once when nothing is in flight for its tenant; puts made while a
    call is in flight wait for it and then go out together in the next one. Busy workers
    so pay one call for many outputs, and a lone put waits for nothing."""

    def __init__(
        self, stub: asset_service_pb2_grpc.AssetServiceStub, timeout: float | None
    ) -> None:
        self._stub = stub
        self._timeout = timeout
        self._queued: dict[str, list[_Put]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    async def put(self, tenant: str, request: asset_service_pb2.PutAssetRequest) -> asset_pb2.Asset:
        """The stored asset; raises grpc.aio.AioRpcError as PutAsset would."""
        done: asyncio.Future[asset_pb2.Asset] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(tenant, []).append(_Put(request, done))
        if tenant not in self._senders:
            self._senders[tenant] = asyncio.create_task(self._send(tenant))
        return await done

    async def _send(self, tenant: str) -> None:
        batch: list[_Put] = []
        try:
            while self._queued.get(tenant):
                batch = self._take(tenant)
                if batch:
                    await self._call(tenant, batch)
        finally:
            del self._senders[tenant]
            # Only when this task itself is cancelled (shutdown) is anything left waiting.
            for put in batch + self._queued.pop(tenant, []):
                if not put.done.done():
                    put.done.cancel()

    def _take(self, tenant: str) -> list[_Put]:
        queued = self._queued.pop(tenant)
        batch: list[_Put] = []
        size = 0
        for index, put in enumerate(queued):
            if put.done.done():
                continue  # its caller gave up
            data = len(put.request.data)
            if batch and (len(batch) == BATCH_PUT_ITEMS or size + data > BATCH_PUT_BYTES):
                # Nothing can have queued since the pop: no await in between.
                self._queued[tenant] = queued[index:]
                break
            batch.append(put)
            size += data
        return batch

    async def _call(self, tenant: str, batch: list[_Put]) -> None:
        try:
            response = await self._stub.BatchPutAssets(
                asset_service_pb2.BatchPutAssetsRequest(requests=[p.request for p in batch]),
                metadata=tenant_metadata(tenant),
                timeout=self._timeout,
            )
            if len(response.results) != len(batch):
                raise _rpc_error(
                    grpc.StatusCode.INTERNAL,
                    f"storage answered {len(response.results)} results for {len(batch)} puts",
                )
        except Exception as exc:
            for put in batch:
                if not put.done.done():
                    put.done.set_exception(exc)
            return
        for put, result in zip(batch, response.results, strict=True):
            if put.done.done():
                continue
            if result.HasField("asset"):
                put.done.set_result(result.asset)
            else:
                code = _CODES.get(result.error.code, grpc.StatusCode.UNKNOWN)
                put.done.set_exception(_rpc_error(code, result.error.message, result.error.reason))


def _rpc_error(code: grpc.StatusCode, message: str, reason: str = "") -> grpc.aio.AioRpcError:
    """The error PutAsset would have raised, its reason in the trailers as PutAsset sends it."""
    trailers = grpc.aio.Metadata((REASON_KEY, reason)) if reason else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details=message)
