"""POST /v1/assets over real HTTP: the bridge refuses an upload over its limit as soon as that is
known (from Content-Length, or as a chunked body passes it) without reading the rest, keeps
nothing of it, and passes one at the limit through intact; a storage that never answers gives
DEADLINE_EXCEEDED (504) instead of an HTTP request that hangs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.forms import FORM_OVERHEAD
from tests.gateway.conftest import Answer, Bridge, mesh_bridge, post_partly
from tests.mesh import Mesh

# The bridge adds no storage logic of its own; SQLite keeps the run short.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

# The bridge's limit; storage keeps its default (100 MiB), so only the bridge refuses at this.
LIMIT = 200_000
BOUNDARY = "genmesh-upload-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
# Generous: only reached when the bridge waits for bytes that are never sent.
PATIENCE = 30.0


@pytest.fixture
async def narrow(mesh: Mesh) -> AsyncIterator[Bridge]:
    """A bridge whose upload limit is LIMIT, in front of a real mesh."""
    async with mesh_bridge(mesh, GENMESH_STORAGE_MAX_UPLOAD_BYTES=str(LIMIT)) as bridge:
        yield bridge


def field(name: str, value: str) -> bytes:
    """One complete form field."""
    disposition = f'Content-Disposition: form-data; name="{name}"'
    return f"--{BOUNDARY}\r\n{disposition}\r\n\r\n{value}\r\n".encode()


def head(key: str = "", media_type: str = "application/octet-stream") -> bytes:
    """A multipart body up to its file's first byte: the idempotency key, then the file part."""
    disposition = 'Content-Disposition: form-data; name="file"; filename="f.bin"'
    file_part = f"--{BOUNDARY}\r\n{disposition}\r\nContent-Type: {media_type}\r\n\r\n"
    return (field("idempotency_key", key) if key else b"") + file_part.encode()


async def upload_partly(bridge: Bridge, headers: dict[str, str], sent: bytes) -> Answer:
    """POST /v1/assets, send `sent` of its body and no more, and read the answer."""
    headers = {"Content-Type": MULTIPART, **headers}
    return await post_partly(bridge.http, "/v1/assets", headers, sent, PATIENCE)


def chunked(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body (with no last chunk after it)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def assert_over_limit(answer: Answer) -> None:
    assert answer.status == 413, answer
    assert answer.body["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert f"limit of {LIMIT} bytes" in answer.body["error"]["message"]


async def assert_key_unused(http: httpx.AsyncClient, key: str) -> None:
    """Nothing was stored under `key`: an upload with it now stores its own bytes."""
    data = b"stored afterwards"
    response = await http.post(
        "/v1/assets", data={"idempotency_key": key}, files={"file": ("later.txt", data)}
    )
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_declared_oversize_upload_is_refused_before_its_body(narrow: Bridge) -> None:
    # Content-Length says far more than the limit; only the first bytes are ever sent, so an
    # answer at all shows the bridge did not wait for (or spool) the rest.
    sent = head("declared") + b"\x00" * 1000
    answer = await upload_partly(narrow, {"Content-Length": str(LIMIT * 50)}, sent)
    assert_over_limit(answer)
    await assert_key_unused(narrow.http, "declared")


async def test_a_chunked_upload_is_refused_once_past_the_limit(narrow: Bridge) -> None:
    # No Content-Length: the bridge counts the file's bytes as they come. The body is left open
    # just past the limit, so the answer can only come from counting.
    body = chunked(head("chunked")) + chunked(os.urandom(LIMIT + 1000))
    answer = await upload_partly(narrow, {"Transfer-Encoding": "chunked"}, body)
    assert_over_limit(answer)
    await assert_key_unused(narrow.http, "chunked")


async def test_an_upload_at_the_limit_goes_through_intact(narrow: Bridge) -> None:
    http = narrow.http
    data = os.urandom(LIMIT)
    declared = await http.post(
        "/v1/assets",
        data={"idempotency_key": "at-limit"},
        files={"file": ("at-limit.bin", data, "application/x-test")},
    )
    assert declared.status_code == 201, declared.text

    async def body() -> AsyncIterator[bytes]:
        # Chunked, and in pieces that split the file anywhere.
        yield head(media_type="application/x-test")
        for start in range(0, LIMIT, 77_777):
            yield data[start : start + 77_777]
        yield TAIL

    streamed = await http.post("/v1/assets", content=body(), headers={"content-type": MULTIPART})
    assert streamed.status_code == 201, streamed.text
    for asset in (declared.json(), streamed.json()):
        assert int(asset["size_bytes"]) == LIMIT
        assert asset["sha256"] == hashlib.sha256(data).hexdigest()
        assert asset["media_type"] == "application/x-test"
        content = await http.get(f"/v1/assets/{asset['id']}/content")
        assert content.status_code == 200
        assert content.content == data
        # HEAD (curl -I) gives GET's headers and no body.
        headers = await http.head(f"/v1/assets/{asset['id']}/content")
        assert headers.status_code == 200, headers.text
        assert headers.headers["content-length"] == str(LIMIT)
        assert headers.headers["content-type"] == "application/x-test"
        assert headers.content == b""
    assert declared.json()["filename"] == "at-limit.bin"
    # The declared one kept its key: the same key returns it.
    again = await http.post(
        "/v1/assets", data={"idempotency_key": "at-limit"}, files={"file": ("x", b"other")}
    )
    assert again.json() == declared.json()


async def test_one_byte_over_the_limit_is_refused(narrow: Bridge) -> None:
    # Content-Length is within what the limit allows a form; the file itself is one byte over.
    response = await narrow.http.post(
        "/v1/assets",
        data={"idempotency_key": "one-over"},
        files={"file": ("over.bin", b"\x01" * (LIMIT + 1))},
    )
    assert int(response.request.headers["content-length"]) < LIMIT + FORM_OVERHEAD
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    await assert_key_unused(narrow.http, "one-over")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (head() + b"data" + TAIL.replace(b"--\r\n", b"\r\n") + b"oops", "multipart"),
        (head() + b"data", "closing boundary"),
        (f"--{BOUNDARY}--\r\n".encode(), "file: Field required"),
        (head() + b"data\r\n" + field("idempotency_key", "late")[:-2] + TAIL, "must come before"),
    ],
    ids=["garbage-after-part", "unterminated", "no-file", "key-after-file"],
)
async def test_malformed_forms_are_400(narrow: Bridge, body: bytes, says: str) -> None:
    response = await narrow.http.post(
        "/v1/assets", content=body, headers={"content-type": MULTIPART}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert says in response.json()["error"]["message"]


async def test_a_non_multipart_body_is_400(narrow: Bridge) -> None:
    response = await narrow.http.post("/v1/assets", json={"file": "no"})
    assert response.status_code == 400, response.text
    assert "multipart/form-data" in response.json()["error"]["message"]
