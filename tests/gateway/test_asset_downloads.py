"""GET and HEAD /v1/assets/ID/content over real HTTP, through the bridge to a real storage
(SQLite, blobs on a temp disk or in a fake S3): what a client is answered when the bytes are
gone, and conditional requests on the asset's ETag and Last-Modified."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.storage.blobs import blob_path
from tests.fakes.object_store import ObjectStore
from tests.gateway.conftest import storage_bridge


@dataclass
class Served:
    """A bridge in front of storage alone (no router), and how to delete a blob behind
    storage's back."""

    http: httpx.AsyncClient
    lose: Callable[[str], None]

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
        yield Served(http, lambda sha256: (tmp_path / "blobs" / blob_path(sha256)).unlink())


@pytest.fixture
async def served_from_s3(object_store: ObjectStore, tmp_path: Path) -> AsyncIterator[Served]:
    bucket = object_store.new_bucket()
    s3 = object_store.client()
    async with storage_bridge(
        tmp_path,
        GENMESH_STORAGE_S3_BUCKET=bucket,
        GENMESH_STORAGE_S3_ENDPOINT_URL=object_store.endpoint_url,
    ) as http:
        yield Served(http, lambda sha256: s3.delete_object(Bucket=bucket, Key=blob_path(sha256)))


@pytest.fixture(params=["disk", "s3"])
def backend(request: pytest.FixtureRequest) -> Served:
    """The same bridge over either blob backend."""
    name = "served" if request.param == "disk" else "served_from_s3"
    served: Served = request.getfixturevalue(name)
    return served


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=3-9"}], ids=["whole", "range"])
async def test_an_asset_whose_bytes_are_gone_is_an_error_not_a_broken_200(
    backend: Served, headers: dict[str, str]
) -> None:
    # Storage sent the asset's metadata and then failed, so the bridge had answered 200 with
    # the asset's Content-Length and a body that broke off.
    asset = await backend.upload(b"these bytes will go" * 50)
    backend.lose(asset["sha256"])
    url = f"/v1/assets/{asset['id']}/content"

    response = await backend.http.get(url, headers=headers)

    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": "DATA_LOSS",
            "message": f"the bytes of asset {asset['id']} are missing from storage; "
            "it cannot be read",
        }
    }
    # HEAD answers what GET would, without the body: it answered 200 from the metadata alone.
    head = await backend.http.head(url, headers=headers)
    assert (head.status_code, head.content) == (500, b"")
    assert head.headers["content-type"] == "application/json"
    # Its metadata still reads.
    assert (await backend.http.get(f"/v1/assets/{asset['id']}")).status_code == 200


async def test_a_download_carries_its_etag_and_if_none_match_naming_it_is_a_304(
    served: Served,
) -> None:
    data = b"0123456789abcdefghij" * 10
    asset = await served.upload(data)
    url = f"/v1/assets/{asset['id']}/content"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    whole = await served.http.get(url)
    assert (whole.status_code, whole.content, whole.headers["etag"]) == (200, data, etag)
    part = await served.http.get(url, headers={"Range": "bytes=3-9"})
    assert (part.status_code, part.headers["etag"]) == (206, etag)
    assert (await served.http.head(url)).headers["etag"] == etag

    # Weak comparison: a weak tag names the same bytes too; "*" names any.
    for named in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        for method in ("GET", "HEAD"):
            unchanged = await served.http.request(method, url, headers={"If-None-Match": named})
            assert unchanged.status_code == 304, (method, named)
            assert unchanged.content == b""
            assert unchanged.headers["etag"] == etag
            assert "content-length" not in unchanged.headers
    changed = await served.http.get(url, headers={"If-None-Match": '"other"'})
    assert (changed.status_code, changed.content) == (200, data)
    ranged = await served.http.get(url, headers={"If-None-Match": '"other"', "Range": "bytes=-4"})
    assert (ranged.status_code, ranged.content) == (206, data[-4:])


async def test_if_range_serves_the_range_only_for_the_assets_own_etag(served: Served) -> None:
    data = b"0123456789abcdefghij" * 10
    asset = await served.upload(data)
    url = f"/v1/assets/{asset['id']}/content"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    same = await served.http.get(url, headers={"Range": "bytes=3-9", "If-Range": etag})
    assert (same.status_code, same.content) == (206, data[3:10])
    assert same.headers["content-range"] == f"bytes 3-9/{len(data)}"
    # Another tag, a weak one (never a strong match), or a date (the bridge sends no
    # Last-Modified to compare it with): the whole asset, not a range of other bytes.
    for other in ('"other"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT"):
        whole = await served.http.get(url, headers={"Range": "bytes=3-9", "If-Range": other})
        assert (whole.status_code, whole.content) == (200, data), other
        assert whole.headers["etag"] == etag
        assert "content-range" not in whole.headers
    # A range past the end is ignored, not refused, when If-Range does not match.
    beyond = {"Range": f"bytes={len(data)}-", "If-Range": '"other"'}
    assert (await served.http.get(url, headers=beyond)).status_code == 200
    beyond["If-Range"] = etag
    assert (await served.http.get(url, headers=beyond)).status_code == 416
    # If-Range without a Range changes nothing.
    alone = await served.http.get(url, headers={"If-Range": '"other"'})
    assert (alone.status_code, alone.content) == (200, data)
