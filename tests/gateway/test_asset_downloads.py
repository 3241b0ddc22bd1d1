"""GET and HEAD /v1/assets/ID/content over real HTTP, through the bridge to a real storage
(SQLite, blobs on a temp disk or in a fake S3): what a client is answered when the bytes are
gone, and conditional requests on the asset's ETag and Last-Modified."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from services.storage.blobs import blob_path
from tests.fakes.object_store import ObjectStore
from tests.gateway.conftest import storage_bridge

DATA = b"0123456789abcdefghij" * 10


class Sample(NamedTuple):
    """An asset of DATA: its content's URL, ETag and create time in whole seconds."""

    url: str
    etag: str
    stored: datetime


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

    async def sample(self) -> Sample:
        """DATA uploaded as a new asset."""
        asset = await self.upload(DATA)
        return Sample(
            url=f"/v1/assets/{asset['id']}/content",
            etag=f'"{hashlib.sha256(DATA).hexdigest()}"',
            stored=datetime.fromisoformat(asset["create_time"]).replace(microsecond=0),
        )


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
    url, etag, _ = await served.sample()

    whole = await served.http.get(url)
    assert (whole.status_code, whole.content, whole.headers["etag"]) == (200, DATA, etag)
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
    assert (changed.status_code, changed.content) == (200, DATA)
    ranged = await served.http.get(url, headers={"If-None-Match": '"other"', "Range": "bytes=-4"})
    assert (ranged.status_code, ranged.content) == (206, DATA[-4:])


async def test_if_range_serves_the_range_only_for_the_assets_own_validator(served: Served) -> None:
    url, etag, _ = await served.sample()

    same = await served.http.get(url, headers={"Range": "bytes=3-9", "If-Range": etag})
    assert (same.status_code, same.content) == (206, DATA[3:10])
    assert same.headers["content-range"] == f"bytes 3-9/{len(DATA)}"
    # Last-Modified itself (strong: an asset's bytes never change) serves the range too.
    modified = same.headers["last-modified"]
    dated = await served.http.get(url, headers={"Range": "bytes=3-9", "If-Range": modified})
    assert (dated.status_code, dated.content) == (206, DATA[3:10])
    # Another tag, a weak one (never a strong match), or another date: the whole asset, not a
    # range of other bytes.
    for other in ('"other"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT", "not a date"):
        whole = await served.http.get(url, headers={"Range": "bytes=3-9", "If-Range": other})
        assert (whole.status_code, whole.content) == (200, DATA), other
        assert whole.headers["etag"] == etag
        assert "content-range" not in whole.headers
    # A range past the end is ignored, not refused, when If-Range does not match.
    beyond = {"Range": f"bytes={len(DATA)}-", "If-Range": '"other"'}
    assert (await served.http.get(url, headers=beyond)).status_code == 200
    beyond["If-Range"] = etag
    assert (await served.http.get(url, headers=beyond)).status_code == 416
    # If-Range without a Range changes nothing.
    alone = await served.http.get(url, headers={"If-Range": '"other"'})
    assert (alone.status_code, alone.content) == (200, DATA)


def _date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


async def test_a_download_says_when_the_asset_was_stored_and_if_modified_since_is_a_304(
    served: Served,
) -> None:
    url, _, stored = await served.sample()

    whole = await served.http.get(url)
    assert whole.headers["last-modified"] == _date(stored)
    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=3-9"})):
        answer = await served.http.request(method, url, headers=headers)
        assert answer.headers["last-modified"] == _date(stored), method

    second = timedelta(seconds=1)
    for since in (_date(stored), _date(stored + second)):
        for method in ("GET", "HEAD"):
            unchanged = await served.http.request(method, url, headers={"If-Modified-Since": since})
            assert (unchanged.status_code, unchanged.content) == (304, b""), (method, since)
            assert unchanged.headers["last-modified"] == _date(stored)
    # The obsolete forms of a date count too (RFC 850, asctime).
    later = stored + timedelta(days=1)
    for since in (
        later.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
        later.strftime("%a %b %d %H:%M:%S %Y"),
    ):
        assert (await served.http.get(url, headers={"If-Modified-Since": since})).status_code == 304
    # Stored since then, or a date that is not one: the content.
    for since in (_date(stored - second), "yesterday", f"{_date(stored)}, {_date(stored)}"):
        changed = await served.http.get(url, headers={"If-Modified-Since": since})
        assert (changed.status_code, changed.content) == (200, DATA), since
    # If-None-Match decides alone when present (RFC 9110, 13.1.3).
    other = {"If-None-Match": '"other"', "If-Modified-Since": _date(stored + second)}
    assert (await served.http.get(url, headers=other)).status_code == 200


async def test_if_match_and_if_unmodified_since_refuse_with_412(served: Served) -> None:
    url, etag, stored = await served.sample()
    second = timedelta(seconds=1)

    # Strong comparison: the tag itself, in a list or not, or "*" (any asset that exists).
    for named in (etag, f'"other", {etag}', "*"):
        kept = await served.http.get(url, headers={"If-Match": named})
        assert (kept.status_code, kept.content) == (200, DATA), named
    ranged = await served.http.get(url, headers={"If-Match": etag, "Range": "bytes=3-9"})
    assert (ranged.status_code, ranged.content) == (206, DATA[3:10])
    for since in (_date(stored), _date(stored + second), "not a date"):
        kept = await served.http.get(url, headers={"If-Unmodified-Since": since})
        assert (kept.status_code, kept.content) == (200, DATA), since

    refusals = {
        "If-Match": (
            {"If-Match": '"other"'},
            {"If-Match": f"W/{etag}"},  # a weak tag never matches strongly
            # If-Match comes first: If-None-Match's 304 is never reached.
            {"If-Match": '"other"', "If-None-Match": etag},
        ),
        "after If-Unmodified-Since": (
            {"If-Unmodified-Since": _date(stored - second)},
            {"If-Unmodified-Since": _date(stored - second), "If-None-Match": etag},
            {"If-Unmodified-Since": _date(stored - second), "Range": "bytes=3-9"},
        ),
    }
    for said, cases in refusals.items():
        for headers in cases:
            refused = await served.http.get(url, headers=headers)
            assert refused.status_code == 412, headers
            assert refused.json()["error"]["code"] == "FAILED_PRECONDITION"
            assert said in refused.json()["error"]["message"]
            head = await served.http.head(url, headers=headers)
            assert (head.status_code, head.content) == (412, b""), headers
    # With If-Match present, If-Unmodified-Since is not looked at (RFC 9110, 13.1.4).
    both = {"If-Match": etag, "If-Unmodified-Since": _date(stored - second)}
    assert (await served.http.get(url, headers=both)).status_code == 200
    # Preconditions are for assets that exist: a missing one is still a 404.
    missing = await served.http.get("/v1/assets/a_missing/content", headers={"If-Match": "*"})
    assert missing.status_code == 404


async def test_a_list_of_tags_split_over_several_header_lines_is_read_whole(
    served: Served,
) -> None:
    # A client or proxy may send a list as several lines of one field (RFC 9110, 5.3): only
    # the first line was read, so the tag on the second was missed.
    url, etag, _ = await served.sample()

    def lines(name: str, *values: str) -> list[tuple[str, str]]:
        return [(name, value) for value in values]

    unchanged = await served.http.get(url, headers=lines("If-None-Match", '"other"', etag))
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    kept = await served.http.get(url, headers=lines("If-Match", '"other"', etag))
    assert (kept.status_code, kept.content) == (200, DATA)
    refused = await served.http.head(url, headers=lines("If-Match", '"other"', '"another"'))
    assert refused.status_code == 412
