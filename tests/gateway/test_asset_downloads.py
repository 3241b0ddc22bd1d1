"""GET /v1/assets/ID/content over real HTTP, through the bridge to a real storage (SQLite,
blobs on a temp disk): what a client is answered when the bytes are gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.storage.blobs import blob_path
from tests.gateway.conftest import storage_bridge


@dataclass
class Served:
    """A bridge in front of storage alone (no router), and where storage keeps its blobs."""

    http: httpx.AsyncClient
    blobs: Path

    async def upload(self, data: bytes) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/assets", files={"file": ("note.txt", data, "text/plain")}
        )
        assert response.status_code == 201, response.text
        asset: dict[str, Any] = response.json()
        return asset


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with storage_bridge(tmp_path) as http:
        yield Served(http, tmp_path / "blobs")


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=3-9"}], ids=["whole", "range"])
async def test_an_asset_whose_bytes_are_gone_is_an_error_not_a_broken_200(
    served: Served, headers: dict[str, str]
) -> None:
    # Storage sent the asset's metadata and then failed, so the bridge had answered 200 with
    # the asset's Content-Length and a body that broke off.
    asset = await served.upload(b"these bytes will go" * 50)
    (served.blobs / blob_path(asset["sha256"])).unlink()

    response = await served.http.get(f"/v1/assets/{asset['id']}/content", headers=headers)

    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": "DATA_LOSS",
            "message": f"the bytes of asset {asset['id']} are missing from storage; "
            "it cannot be read",
        }
    }
    # Its metadata still reads.
    assert (await served.http.get(f"/v1/assets/{asset['id']}")).status_code == 200
