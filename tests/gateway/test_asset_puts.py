"""POST /v1/assets:put and /v1/assets:batchPut over real HTTP against a real mesh: what is
stored is what was sent, bad bodies are 400s that store nothing, and a body over the bridge's
limit is refused before it is parsed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from PIL import Image

from gateway.bodies import MAX_JSON_BODY
from services.storage.limits import BATCH_PUT_ITEMS, PUT_LIMIT
from tests.gateway.conftest import Bridge

# The bridge adds no storage logic of its own; SQLite keeps the run short.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

TENANT = {"x-genmesh-tenant": "acme"}


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def item(data: bytes, media_type: str = "application/octet-stream", **meta: str) -> dict[str, Any]:
    """One PutAssetRequest in proto3 JSON."""
    return {
        "metadata": {"media_type": media_type, **meta},
        "data": base64.b64encode(data).decode(),
    }


async def content(http: httpx.AsyncClient, asset: dict[str, Any]) -> bytes:
    response = await http.get(f"/v1/assets/{asset['id']}/content", headers=TENANT)
    assert response.status_code == 200, response.text
    return response.content


def assert_refused(response: httpx.Response, status: int, code: str) -> str:
    """The error body every route returns; its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    message: str = error["message"]
    return message


async def test_put_stores_the_bytes_sent(bridge: Bridge) -> None:
    http = bridge.http
    data = png((200, 30, 30))
    body = item(data, "image/png", filename="fox.png", role="ASSET_ROLE_OUTPUT")
    response = await http.post("/v1/assets:put", json=body, headers=TENANT)
    assert response.status_code == 201, response.text
    asset = response.json()
    assert asset["tenant_id"] == "acme"
    assert asset["media_type"] == "image/png"
    assert asset["filename"] == "fox.png"
    assert asset["role"] == "ASSET_ROLE_OUTPUT"
    assert (asset["width"], asset["height"]) == (8, 6)
    assert asset["sha256"] == hashlib.sha256(data).hexdigest()
    assert int(asset["size_bytes"]) == len(data)

    assert (await http.get(f"/v1/assets/{asset['id']}", headers=TENANT)).json() == asset
    assert await content(http, asset) == data
    # Scoped like every asset: another tenant does not see it.
    assert (await http.get(f"/v1/assets/{asset['id']}")).status_code == 404


async def test_put_takes_either_base64_alphabet_and_honours_keys(bridge: Bridge) -> None:
    http = bridge.http
    # Every byte value, so the encoding has "+" and "/" (URL-safe: "-" and "_") and padding.
    data = bytes(range(256))
    urlsafe = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert "-" in urlsafe and "_" in urlsafe
    body = {"metadata": {"idempotency_key": "every-byte"}, "data": urlsafe}
    first = await http.post("/v1/assets:put", json=body, headers=TENANT)
    assert first.status_code == 201, first.text
    asset = first.json()
    assert asset["sha256"] == hashlib.sha256(data).hexdigest()
    assert await content(http, asset) == data

    # The same key returns the first asset, as PutAsset does, whatever the bytes.
    again = await http.post(
        "/v1/assets:put", json=item(b"other", idempotency_key="every-byte"), headers=TENANT
    )
    assert again.status_code == 201, again.text
    assert again.json() == asset


async def test_batch_put_stores_each_item_or_says_why_not(bridge: Bridge) -> None:
    http = bridge.http
    blobs = [png((10, 20, 30)), b"plain words", bytes(range(100, 200))]
    items = [item(blobs[0], "image/png"), item(blobs[1], "text/plain"), item(blobs[2])]
    items.insert(2, item(b"fine bytes", "not a media type"))
    response = await http.post("/v1/assets:batchPut", json={"requests": items}, headers=TENANT)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 4

    refused = results.pop(2)
    assert set(refused) == {"error"}
    assert refused["error"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "media_type" in refused["error"]["message"]
    assert [set(result) for result in results] == [{"asset"}] * 3
    for result, data in zip(results, blobs, strict=True):
        asset = result["asset"]
        assert asset["tenant_id"] == "acme"
        assert asset["sha256"] == hashlib.sha256(data).hexdigest()
        assert int(asset["size_bytes"]) == len(data)
        assert await content(http, asset) == data
    assert len({result["asset"]["id"] for result in results}) == 3


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"data": "aGVsbG8="', "JSON"),
        (b'["aGVsbG8="]', "object"),
        (b'{"data": "aGVs bG8="}', "base64"),
        (b'{"data": "aGVs*bG8="}', "base64"),
        (b'{"data": "aGVsbG8=A"}', "base64"),
        (b'{"data": "aGVsb"}', "base64"),
        (b'{"data": "aGVsbG8=", "colour": "red"}', "colour"),
        (b'{"data": "aGVsbG8=", "metadata": {"role": "ASSET_ROLE_BOSS"}}', "role"),
        (b'{"data": "aGVsbG8=", "metadata": {"media_type": 7}}', "media_type"),
        (b"", "required"),
    ],
    ids=[
        "unclosed",
        "not-an-object",
        "space",
        "star",
        "after-padding",
        "one-too-many",
        "unknown-field",
        "unknown-role",
        "number-for-text",
        "empty",
    ],
)
async def test_malformed_puts_are_400(bridge: Bridge, body: bytes, says: str) -> None:
    for path in ("/v1/assets:put", "/v1/assets:batchPut"):
        # The same item as a batch's only request, so both routes parse it the same way.
        sent = body if path.endswith(":put") or not body else b'{"requests": [' + body + b"]}"
        response = await bridge.http.post(
            path, content=sent, headers={"content-type": "application/json"}
        )
        message = assert_refused(response, 400, "INVALID_ARGUMENT")
        assert says in message, (path, message)


async def test_a_refused_batch_stores_nothing(bridge: Bridge) -> None:
    http = bridge.http
    good = item(b"would be stored", idempotency_key="half")
    bad = {"data": "not base64!"}
    refused = await http.post("/v1/assets:batchPut", json={"requests": [good, bad]})
    assert_refused(refused, 400, "INVALID_ARGUMENT")
    # Had the good item been stored, its key would now return it instead of these bytes.
    later = await http.post("/v1/assets:put", json=item(b"stored later", idempotency_key="half"))
    assert later.status_code == 201, later.text
    assert later.json()["sha256"] == hashlib.sha256(b"stored later").hexdigest()


async def test_contract_limits_are_storage_refusals(bridge: Bridge) -> None:
    http = bridge.http
    over = await http.post("/v1/assets:put", json=item(b"\x00" * (PUT_LIMIT + 1)))
    assert "POST /v1/assets" in assert_refused(over, 413, "RESOURCE_EXHAUSTED")
    heavy = await http.post(
        "/v1/assets:batchPut", json={"requests": [item(b"\x00" * (PUT_LIMIT // 2 + 1))] * 4}
    )
    assert "at most" in assert_refused(heavy, 413, "RESOURCE_EXHAUSTED")
    empty = await http.post("/v1/assets:put", json=item(b""))
    assert "no bytes" in assert_refused(empty, 400, "INVALID_ARGUMENT")
    none = await http.post("/v1/assets:batchPut", json={"requests": []})
    assert "1 to" in assert_refused(none, 400, "INVALID_ARGUMENT")
    many = await http.post(
        "/v1/assets:batchPut", json={"requests": [item(b"x")] * (BATCH_PUT_ITEMS + 1)}
    )
    assert "1 to" in assert_refused(many, 400, "INVALID_ARGUMENT")


async def test_a_body_over_the_limit_is_refused_unread(bridge: Bridge) -> None:
    http = bridge.http
    data = b"A" * (MAX_JSON_BODY // 4 * 3)  # base64 alone comes to MAX_JSON_BODY
    body = item(data)
    declared = await http.post("/v1/assets:put", json=body)
    assert "limit" in assert_refused(declared, 413, "RESOURCE_EXHAUSTED")

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit holds as the bytes arrive.
        yield b'{"requests": [{"data": "'
        for _ in range(MAX_JSON_BODY // 65536 + 1):
            yield b"QUFB" * 16384

    streamed = await http.post(
        "/v1/assets:batchPut", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "limit" in assert_refused(streamed, 413, "RESOURCE_EXHAUSTED")


async def test_a_client_gone_mid_body_is_no_bridge_error(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    url = bridge.http.base_url
    _, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"POST /v1/assets:put HTTP/1.1\r\nHost: {url.host}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"data": "')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # The bridge still serves, and logged nothing for the cut body.
    assert (await bridge.http.get("/healthz")).status_code == 200
    await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
