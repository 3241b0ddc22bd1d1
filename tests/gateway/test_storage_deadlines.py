"""The bridge's calls to storage have deadlines: a storage that takes every call and never
answers gives DEADLINE_EXCEEDED (504), or a download cut short, instead of HTTP requests that
hang forever."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from genmesh.v1 import asset_pb2, asset_service_pb2, asset_service_pb2_grpc
from tests.gateway.conftest import bridge_http, serving_grpc
from tests.infra import free_port

# Generous: only reached when the bridge waits on storage with no deadline.
PATIENCE = 30.0


class _Hung(asset_service_pb2_grpc.AssetServiceServicer):
    """An AssetService that takes every call and never answers (a download: after its
    metadata, for the asset id "stalls")."""

    async def _forever(self) -> None:
        await asyncio.Event().wait()

    async def GetAsset(self, request: Any, context: Any) -> Any:
        await self._forever()

    async def PutAsset(self, request: Any, context: Any) -> Any:
        await self._forever()

    async def BatchPutAssets(self, request: Any, context: Any) -> Any:
        await self._forever()

    async def UploadAsset(self, request_iterator: Any, context: Any) -> Any:
        await self._forever()

    async def DownloadAsset(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if request.asset_id == "stalls":
            asset = asset_pb2.Asset(id="stalls", size_bytes=10, media_type="text/plain")
            yield asset_service_pb2.DownloadAssetResponse(asset=asset)
        await self._forever()


@pytest.fixture
async def hung_storage() -> AsyncIterator[httpx.AsyncClient]:
    """A bridge whose storage (on loopback) accepts every call and never answers; the bridge
    gives it 0.5 s a step."""
    async with serving_grpc(
        _Hung(), asset_service_pb2_grpc.add_AssetServiceServicer_to_server
    ) as at:
        free = f"127.0.0.1:{free_port()}"
        settings = Settings(router_addr=free, storage_addr=at, storage_timeout=0.5)
        async with bridge_http(settings) as http:
            yield http


async def test_a_hung_storage_is_a_deadline_not_a_hang(hung_storage: httpx.AsyncClient) -> None:
    http = hung_storage
    item = {"data": "aGVsbG8="}
    calls = {
        "get": http.get("/v1/assets/a_1"),
        "content": http.get("/v1/assets/a_1/content"),
        "put": http.post("/v1/assets:put", json=item),
        "batchPut": http.post("/v1/assets:batchPut", json={"requests": [item]}),
        "small upload": http.post("/v1/assets", files={"file": ("s.bin", b"small")}),
        # More than flow control lets through unread: the bridge's writes wait on storage.
        "large upload": http.post("/v1/assets", files={"file": ("l.bin", os.urandom(8 << 20))}),
    }
    for name, call in calls.items():
        response = await asyncio.wait_for(call, PATIENCE)
        assert response.status_code == 504, (name, response.text)
        assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED", name


async def test_a_download_that_stalls_midway_is_cut_off(hung_storage: httpx.AsyncClient) -> None:
    # The 200 and its headers are out when storage stops sending: the bridge can only end the
    # response short, which the client sees as a body that broke off.
    async with hung_storage.stream("GET", "/v1/assets/stalls/content") as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await asyncio.wait_for(response.aread(), PATIENCE)
