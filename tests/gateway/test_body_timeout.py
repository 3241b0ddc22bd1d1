"""A client that stops sending its body, over real HTTP: the bridge waits
GENMESH_HTTP_BODY_TIMEOUT for each next piece, then answers 408 DEADLINE_EXCEEDED, closes the
connection and keeps nothing (an upload leaves no asset and no partial blob); a body that keeps
coming is taken however long it takes in all."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.storage.limits import PUT_LIMIT
from tests.gateway.conftest import Answer, Bridge, mesh_bridge, post_partly
from tests.gateway.test_uploads import MULTIPART, PATIENCE, TAIL, assert_key_unused, head
from tests.infra import eventually
from tests.mesh import Mesh

# The bridge adds no storage logic of its own; SQLite keeps the run short.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

# The bridge's body timeout here, in seconds.
PAUSE = 2.0


@pytest.fixture
async def impatient(mesh: Mesh) -> AsyncIterator[Bridge]:
    """A bridge that waits PAUSE seconds for a body's next bytes, in front of a real mesh."""
    async with mesh_bridge(mesh, GENMESH_HTTP_BODY_TIMEOUT=str(PAUSE)) as bridge:
        yield bridge


def assert_timed_out(answer: Answer) -> None:
    assert answer.status == 408, answer
    assert answer.body["error"]["code"] == "DEADLINE_EXCEEDED"
    assert f"nothing came for {PAUSE:g} s" in answer.body["error"]["message"]
    # And post_partly saw the connection close: the rest of the body, should it come, can never
    # be taken for a next request.
    assert answer.headers["connection"] == "close"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_a_stalled_upload_is_408_and_leaves_nothing(impatient: Bridge) -> None:
    blobs = impatient.mesh.data_dir / "blobs"
    # More than storage keeps in memory: it is spooling the upload to a file when the client
    # stalls, so keeping nothing means removing that file.
    sent = head("stalled") + os.urandom(3 * PUT_LIMIT)
    headers = {"Content-Type": MULTIPART, "Content-Length": str(len(sent) + 1000)}
    answer = asyncio.create_task(post_partly(impatient.http, "/v1/assets", headers, sent, PATIENCE))
    await eventually(lambda: files_under(blobs) or answer.done(), within=PATIENCE)
    assert files_under(blobs), "storage never began spooling the upload"
    assert_timed_out(await answer)
    await eventually(lambda: not files_under(blobs), within=PATIENCE)
    await assert_key_unused(impatient.http, "stalled")


async def test_a_stalled_job_is_408_and_creates_nothing(impatient: Bridge) -> None:
    tenant = {"x-genmesh-tenant": "stalled"}
    sent = b'{"task": "text-to-image", "prompt": "a red fox'
    headers = {"Content-Type": "application/json", "Content-Length": "200", **tenant}
    assert_timed_out(await post_partly(impatient.http, "/v1/jobs", headers, sent, PATIENCE))
    listed = await impatient.http.get("/v1/jobs", headers=tenant)
    assert listed.status_code == 200, listed.text
    assert listed.json()["jobs"] == []


async def test_a_stalled_chunked_put_is_408(impatient: Bridge) -> None:
    # No Content-Length: the body stalls inside a chunk.
    piece = b'{"metadata": {"idempotency_key": "stalled-put"}, "data": "aGVs'
    sent = f"{len(piece) + 100:x}\r\n".encode() + piece
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    answer = await post_partly(impatient.http, "/v1/assets:put", headers, sent, PATIENCE)
    assert_timed_out(answer)
    later = await impatient.http.post(
        "/v1/assets:put",
        json={"metadata": {"idempotency_key": "stalled-put"}, "data": "bGF0ZXI="},
    )
    assert later.status_code == 201, later.text
    assert later.json()["sha256"] == hashlib.sha256(b"later").hexdigest()


async def test_a_slow_body_that_keeps_coming_is_taken(impatient: Bridge) -> None:
    # Each piece comes well within PAUSE of the one before, the whole body in more than twice
    # PAUSE: the bound is on a pause, so a large upload on a slow but steady link goes through.
    data = os.urandom(12 * 1000)
    body = head("slow") + data + TAIL

    async def slowly() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]
            await asyncio.sleep(PAUSE / 5)

    response = await impatient.http.post(
        "/v1/assets", content=slowly(), headers={"content-type": MULTIPART}
    )
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert response.json()["size_bytes"] == str(len(data))
