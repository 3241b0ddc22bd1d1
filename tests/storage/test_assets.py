"""AssetService end to end: a real gRPC server, a real database, blobs on a temp disk."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import logging
import os
import signal
import wave
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from genmesh.v1 import asset_pb2, asset_service_pb2, asset_service_pb2_grpc
from services.common.errors import TOO_LARGE, reason_of
from services.common.tenancy import tenant_metadata
from services.storage.app import running_storage
from services.storage.blobs import LocalBlobStore, settled
from services.storage.client import CHUNK_SIZE, AssetClient
from services.storage.core import WRITE_BLOCK, NewAsset
from services.storage.limits import PUT_LIMIT
from services.storage.put_batcher import PutBatcher
from services.storage.settings import Settings as StorageSettings
from tests.conftest import Database
from tests.infra import eventually
from tests.storage.conftest import (
    IN_MEMORY_BYTES,
    MAX_UPLOAD_BYTES,
    Storage,
    busy_threads,
    cancelled_downloads,
    download_messages,
    resource_warnings,
    serving_storage,
    storage_process,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT

TENANT = "acme"


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def animated_bytes(frame_ms: list[int], image_format: str = "GIF") -> bytes:
    frames = [Image.new("RGB", (16, 8), (i * 80, 0, 0)) for i in range(len(frame_ms))]
    out = io.BytesIO()
    frames[0].save(
        out, format=image_format, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0
    )
    return out.getvalue()


def wav_bytes(seconds: float, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x01" * int(seconds * rate))
    return out.getvalue()


async def expect_code(code: grpc.StatusCode, call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


async def test_upload_then_download_is_byte_identical(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 123)
    asset = await storage.client.upload(
        data,
        tenant=TENANT,
        media_type="application/x-test",
        filename="noise.bin",
        role=asset_pb2.ASSET_ROLE_OUTPUT,
        job_id="j_1",
    )
    assert asset.id.startswith("a_")
    assert asset.tenant_id == TENANT
    assert asset.size_bytes == len(data)
    assert asset.sha256 == hashlib.sha256(data).hexdigest()
    assert (asset.media_type, asset.filename, asset.job_id) == (
        "application/x-test",
        "noise.bin",
        "j_1",
    )
    assert asset.role == asset_pb2.ASSET_ROLE_OUTPUT
    assert asset.create_time.seconds > 0

    assert await storage.client.download(asset.id, tenant=TENANT) == data
    assert await storage.client.get(asset.id, tenant=TENANT) == asset
    target = tmp_path / "out.bin"
    assert await storage.client.download_to(asset.id, target, tenant=TENANT) == asset
    assert target.read_bytes() == data
    assert await storage.row_count() == 1
    assert [p.name for p in storage.blob_files()] == [asset.sha256]


async def test_streamed_upload_rechunks_large_pieces(storage: Storage) -> None:
    data = os.urandom(MAX_UPLOAD_BYTES - 10)

    async def pieces() -> AsyncIterator[bytes]:
        yield data[:100]
        yield data[100:]  # one piece far larger than a chunk

    asset = await storage.client.upload(pieces(), tenant=TENANT, media_type="")
    assert asset.media_type == "application/octet-stream"
    assert await storage.client.download(asset.id, tenant=TENANT) == data


async def test_png_metadata_and_sniffed_type(storage: Storage) -> None:
    asset = await storage.client.upload(png_bytes(37, 21), tenant=TENANT, media_type="")
    assert (asset.media_type, asset.width, asset.height) == ("image/png", 37, 21)
    got = await storage.client.get(asset.id, tenant=TENANT)
    assert (got.width, got.height, got.duration_seconds) == (37, 21, 0.0)


async def test_wav_duration(storage: Storage) -> None:
    asset = await storage.client.upload(
        wav_bytes(1.5), tenant=TENANT, media_type="application/octet-stream"
    )
    assert asset.media_type == "audio/wav"
    assert asset.duration_seconds == pytest.approx(1.5)
    assert (await storage.client.get(asset.id, tenant=TENANT)).duration_seconds == (
        pytest.approx(1.5)
    )


async def test_wav_duration_counts_only_the_samples_present(storage: Storage) -> None:
    # A streaming writer leaves the sizes at 0xFFFFFFFF, and a cut-off file declares more
    # samples than it holds: either way the duration is that of the samples actually sent.
    whole = wav_bytes(1.0)
    data = whole.index(b"data")
    streamed = bytearray(whole)
    streamed[4:8] = streamed[data + 4 : data + 8] = b"\xff\xff\xff\xff"
    for body, seconds in ((bytes(streamed), 1.0), (whole[: data + 8 + 16_000], 0.5)):
        asset = await storage.client.upload(body, tenant=TENANT, media_type="audio/wav")
        assert asset.duration_seconds == pytest.approx(seconds)


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "PNG"])
async def test_animated_image_duration_from_frames(storage: Storage, image_format: str) -> None:
    asset = await storage.client.upload(
        animated_bytes([100, 200, 300], image_format), tenant=TENANT, media_type=""
    )
    assert asset.media_type == f"image/{image_format.lower()}"
    assert (asset.width, asset.height) == (16, 8)
    assert asset.duration_seconds == pytest.approx(0.6)


async def test_declared_type_is_kept_and_garbage_image_is_unmeasured(storage: Storage) -> None:
    asset = await storage.client.upload(b"not a png", tenant=TENANT, media_type="IMAGE/PNG")
    assert (asset.media_type, asset.width, asset.height) == ("image/png", 0, 0)
    text = await storage.client.upload(
        b"hello", tenant=TENANT, media_type="text/plain;charset=utf-8"
    )
    assert text.media_type == "text/plain; charset=utf-8"


async def test_ranged_download(storage: Storage) -> None:
    data = os.urandom(200_000)
    asset = await storage.client.upload(data, tenant=TENANT, media_type="application/x-test")
    client = storage.client
    assert await client.download(asset.id, tenant=TENANT, offset=10, length=5) == data[10:15]
    assert await client.download(asset.id, tenant=TENANT, offset=70_000) == data[70_000:]
    assert (
        await client.download(asset.id, tenant=TENANT, offset=199_990, length=1000)
        == data[199_990:]
    )
    assert await client.download(asset.id, tenant=TENANT, offset=len(data)) == b""
    await expect_code(
        grpc.StatusCode.OUT_OF_RANGE,
        client.download(asset.id, tenant=TENANT, offset=len(data) + 1),
    )
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT, client.download(asset.id, tenant=TENANT, offset=-1)
    )


async def test_download_stream_can_stop_early(storage: Storage) -> None:
    data = os.urandom(600_000)
    asset = await storage.client.upload(data, tenant=TENANT, media_type="application/x-test")
    stream = await storage.client.open(asset.id, tenant=TENANT)
    assert stream.asset.size_bytes == len(data)
    async for chunk in stream:
        assert chunk == data[: len(chunk)]
        break
    # The server is still healthy and serving after the abandoned stream.
    assert await storage.client.download(asset.id, tenant=TENANT) == data
    # And it let go of the blob file: an abandoned stream leaks no descriptor.
    await eventually(lambda: open_files_under(storage.blobs.root) == [])


@pytest.mark.parametrize("request_range", [{}, {"offset": 5, "length": 10}], ids=["whole", "range"])
async def test_an_asset_whose_blob_is_gone_is_data_loss_before_any_message(
    storage: Storage, caplog: pytest.LogCaptureFixture, request_range: dict[str, int]
) -> None:
    # The row stays; the bytes went behind storage's back (a disk restored without them, an
    # operator's clean-up). The metadata went out first and the call then failed INTERNAL,
    # so the bridge had already answered 200 and its body broke off.
    asset = await storage.client.upload(b"soon gone" * 100, tenant=TENANT, media_type="text/plain")
    [blob] = storage.blob_files()
    blob.unlink()

    received, failed = await download_messages(
        storage.channel, asset.id, tenant=TENANT, **request_range
    )

    assert received == []
    assert failed is not None and failed.code() == grpc.StatusCode.DATA_LOSS
    assert failed.details() == (
        f"the bytes of asset {asset.id} are missing from storage; it cannot be read"
    )
    assert f"asset {asset.id}: its blob {asset.sha256} is missing" in caplog.text
    # The metadata is still there, and a download of another asset still works.
    assert (await storage.client.get(asset.id, tenant=TENANT)).sha256 == asset.sha256
    other = await storage.client.upload(b"still here", tenant=TENANT, media_type="text/plain")
    assert await storage.client.download(other.id, tenant=TENANT) == b"still here"


async def test_stopping_storage_closes_a_download_still_streaming(tmp_path: Path) -> None:
    # A client that stops reading leaves the handler suspended mid-stream, blob file open, when
    # the stopping server cancels it; that file was left to the garbage collector. SQLite only:
    # a PostgreSQL engine is slow enough to close that the collector often got there first.
    env = {
        "GENMESH_LISTEN": "127.0.0.1:0",
        "GENMESH_DATA_DIR": str(tmp_path),
        "GENMESH_SHUTDOWN_GRACE": "0.2",
    }
    blobs = tmp_path / "blobs"
    # More than the flow-control windows hold, so the server waits on the client.
    data = os.urandom(16 * 1024 * 1024)
    channel: grpc.aio.Channel | None = None
    try:
        async with running_storage(StorageSettings.from_env(env)) as server:
            channel = grpc.aio.insecure_channel(server.address)
            asset = await AssetClient(channel).upload(
                data, tenant=TENANT, media_type="application/x-test"
            )
            call = asset_service_pb2_grpc.AssetServiceStub(channel).DownloadAsset(
                asset_service_pb2.DownloadAssetRequest(asset_id=asset.id),
                metadata=tenant_metadata(TENANT),
            )
            first = await call.read()
            assert isinstance(first, asset_service_pb2.DownloadAssetResponse)
            assert first.WhichOneof("part") == "asset"
            second = await call.read()
            assert isinstance(second, asset_service_pb2.DownloadAssetResponse)
            assert second.chunk == data[:CHUNK_SIZE]
            assert 0 < await stalled_read(blobs) < len(data)
        assert open_files_under(blobs) == []
    finally:
        if channel is not None:
            await channel.close()


async def test_cancelled_downloads_leave_no_blob_file_open(
    database: Database, tmp_path: Path
) -> None:
    # A client that hangs up as the read ends (one that asked for a byte and cancels once it
    # has the metadata or the byte) cancelled the handler while the blob file's close waited
    # for a free thread, as it does on a busy storage: the cancellation withdrew the close,
    # and the file was left to the garbage collector ("unclosed file" ResourceWarning).
    blobs = LocalBlobStore(tmp_path / "blobs")
    data = os.urandom(5 * CHUNK_SIZE)
    with resource_warnings() as unclosed:
        async with serving_storage(database, blobs) as running:
            asset = await running.client.upload(data, tenant=TENANT, media_type="text/plain")
            async with busy_threads():
                await cancelled_downloads(running.channel, asset.id, tenant=TENANT)
            assert await running.client.download(asset.id, tenant=TENANT, length=1) == data[:1]
        # Stopped, so every handler has ended.
    assert unclosed == []
    assert open_files_under(blobs.root) == []


async def stalled_read(root: Path, quiet: float = 0.3) -> int:
    """The position of the one file open under `root`, once it has not moved for `quiet` s."""

    async def settled() -> int:
        before = read_positions(root)
        await asyncio.sleep(quiet)
        after = read_positions(root)
        return after[0] if len(after) == 1 and after == before else 0

    position: int = await eventually(settled)
    return position


def read_positions(root: Path) -> list[int]:
    """Offsets of the files under `root` this process holds open."""
    positions = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(root)):
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    positions.append(int(info.readline().split()[1]))
        except OSError:
            continue  # closed meanwhile
    return positions


def open_files_under(root: Path) -> list[str]:
    """Files under `root` this process (storage runs in it here) holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(root)):
            held.append(target)
    return held


async def test_over_limit_upload_keeps_nothing(storage: Storage) -> None:
    data = os.urandom(MAX_UPLOAD_BYTES + 1)
    refused = await expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        storage.client.upload(data, tenant=TENANT, media_type="application/x-test"),
    )
    # Said to be too large, not too soon: a client must send less, not retry.
    assert reason_of(refused) == TOO_LARGE
    assert await storage.row_count() == 0
    assert storage.blob_files() == []
    assert storage.blobs.staged() == []
    # Exactly the limit is fine.
    ok = await storage.client.upload(
        data[:MAX_UPLOAD_BYTES], tenant=TENANT, media_type="application/x-test"
    )
    assert ok.size_bytes == MAX_UPLOAD_BYTES


async def test_put_asset_is_one_message_with_the_same_checks(storage: Storage) -> None:
    stub = asset_service_pb2_grpc.AssetServiceStub(storage.channel)
    meta = asset_service_pb2.UploadMetadata(
        filename="fox.png", role=asset_pb2.ASSET_ROLE_OUTPUT, job_id="j_9", idempotency_key="k"
    )
    data = png_bytes(40, 30)
    put = await stub.PutAsset(
        asset_service_pb2.PutAssetRequest(metadata=meta, data=data),
        metadata=tenant_metadata(TENANT),
    )
    asset = put.asset
    assert (asset.media_type, asset.width, asset.height) == ("image/png", 40, 30)
    assert asset.sha256 == hashlib.sha256(data).hexdigest()
    assert await storage.client.download(asset.id, tenant=TENANT) == data
    # The same key returns the first asset, as with UploadAsset.
    again = await stub.PutAsset(
        asset_service_pb2.PutAssetRequest(metadata=meta, data=b"other"),
        metadata=tenant_metadata(TENANT),
    )
    assert again.asset == asset
    for request, code, reason, says in (
        (asset_service_pb2.PutAssetRequest(metadata=meta), INVALID, "", "no bytes"),
        (
            asset_service_pb2.PutAssetRequest(data=os.urandom(PUT_LIMIT + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            TOO_LARGE,
            "UploadAsset",
        ),
    ):
        error = await expect_code(code, stub.PutAsset(request, metadata=tenant_metadata(TENANT)))
        assert says in (error.details() or "")
        assert reason_of(error) == reason
    assert await storage.row_count() == 1


async def test_batch_put_stores_each_item_and_answers_each_error(storage: Storage) -> None:
    stub = asset_service_pb2_grpc.AssetServiceStub(storage.channel)
    good = [png_bytes(8 + i, 8) for i in range(3)]
    items = [
        asset_service_pb2.PutAssetRequest(
            metadata=asset_service_pb2.UploadMetadata(media_type="image/png", job_id="j_1"),
            data=data,
        )
        for data in good
    ]
    items.insert(1, asset_service_pb2.PutAssetRequest(data=b""))  # no bytes
    items.append(asset_service_pb2.PutAssetRequest(data=os.urandom(PUT_LIMIT + 1)))
    reply = await stub.BatchPutAssets(
        asset_service_pb2.BatchPutAssetsRequest(requests=items),
        metadata=tenant_metadata(TENANT),
    )
    kinds = [r.WhichOneof("outcome") for r in reply.results]
    assert kinds == ["asset", "error", "asset", "asset", "error"]
    errors = [(r.error.code, r.error.reason) for r in reply.results if r.HasField("error")]
    # What PutAsset would answer, reason included: an item over 1 MiB is too large.
    assert errors == [
        (INVALID.value[0], ""),
        (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], TOO_LARGE),
    ]
    messages = [r.error.message for r in reply.results if r.HasField("error")]
    assert "no bytes" in messages[0] and "UploadAsset" in messages[1]
    stored = [r.asset for r in reply.results if r.HasField("asset")]
    assert [a.width for a in stored] == [8, 9, 10]
    for asset, data in zip(stored, good, strict=True):
        assert await storage.client.download(asset.id, tenant=TENANT) == data
    assert await storage.row_count() == 3
    for count in (0, 65):
        await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.BatchPutAssets(
                asset_service_pb2.BatchPutAssetsRequest(requests=items[:1] * count),
                metadata=tenant_metadata(TENANT),
            ),
        )
    half = asset_service_pb2.PutAssetRequest(data=os.urandom(PUT_LIMIT // 2 + 1))
    heavy = await expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.BatchPutAssets(
            asset_service_pb2.BatchPutAssetsRequest(requests=[half] * 4),
            metadata=tenant_metadata(TENANT),
        ),
    )
    assert reason_of(heavy) == TOO_LARGE
    assert await storage.row_count() == 3


class _CountingStub:
    """The real stub, counting BatchPutAssets calls and their sizes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = asset_service_pb2_grpc.AssetServiceStub(channel)
        self.sizes: list[int] = []

    def BatchPutAssets(self, request: asset_service_pb2.BatchPutAssetsRequest, **kw: Any) -> Any:
        self.sizes.append(len(request.requests))
        return self._stub.BatchPutAssets(request, **kw)


async def test_concurrent_puts_share_calls_and_keep_their_own_outcomes(storage: Storage) -> None:
    stub = _CountingStub(storage.channel)
    batcher = PutBatcher(stub, timeout=10)  # type: ignore[arg-type]

    def put(data: bytes) -> asset_service_pb2.PutAssetRequest:
        return asset_service_pb2.PutAssetRequest(
            metadata=asset_service_pb2.UploadMetadata(media_type="application/x-test"), data=data
        )

    alone = await batcher.put(TENANT, put(b"alone"))
    assert alone.size_bytes == 5 and stub.sizes == [1]
    payloads = [os.urandom(100 + i) for i in range(40)]
    results = await asyncio.gather(
        *(batcher.put(TENANT, put(p)) for p in payloads),
        batcher.put(TENANT, put(b"")),
        return_exceptions=True,
    )
    *assets, empty = results
    assert [a.size_bytes for a in assets] == [len(p) for p in payloads]  # type: ignore[union-attr]
    assert isinstance(empty, grpc.aio.AioRpcError)
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Forty-one puts made together went out in far fewer calls than one each.
    assert sum(stub.sizes) == 42 and len(stub.sizes) <= 3
    # Past the item limit a queue is split across calls.
    stub.sizes.clear()
    await asyncio.gather(*(batcher.put(TENANT, put(os.urandom(10))) for _ in range(100)))
    assert sum(stub.sizes) == 100 and max(stub.sizes) == 64
    assert await storage.row_count() == 141


async def test_cancelled_upload_leaves_no_partial_file(storage: Storage) -> None:
    stub = asset_service_pb2_grpc.AssetServiceStub(storage.channel)
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[asset_service_pb2.UploadAssetRequest]:
        meta = asset_service_pb2.UploadMetadata(media_type="application/x-test")
        yield asset_service_pb2.UploadAssetRequest(metadata=meta)
        # Past the in-memory limit, then enough to reach the disk.
        for _ in range((IN_MEMORY_BYTES + WRITE_BLOCK) // CHUNK_SIZE + 2):
            yield asset_service_pb2.UploadAssetRequest(chunk=os.urandom(CHUNK_SIZE))
        sent.set()
        await asyncio.Event().wait()  # never finishes: the client gives up instead
        yield asset_service_pb2.UploadAssetRequest(chunk=b"")

    call = stub.UploadAsset(stalls(), metadata=tenant_metadata(TENANT))
    await sent.wait()
    await eventually(storage.blobs.staged)  # the server is spooling
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: storage.blobs.staged() == [])
    assert await storage.row_count() == 0
    assert storage.blob_files() == []


async def test_upload_without_metadata_first_is_invalid(storage: Storage) -> None:
    stub = asset_service_pb2_grpc.AssetServiceStub(storage.channel)
    Request = asset_service_pb2.UploadAssetRequest

    async def chunk_first() -> AsyncIterator[asset_service_pb2.UploadAssetRequest]:
        yield Request(chunk=b"abc")
        yield Request(metadata=asset_service_pb2.UploadMetadata(media_type="text/plain"))

    async def nothing() -> AsyncIterator[asset_service_pb2.UploadAssetRequest]:
        return
        yield

    async def metadata_twice() -> AsyncIterator[asset_service_pb2.UploadAssetRequest]:
        meta = asset_service_pb2.UploadMetadata(media_type="text/plain")
        yield Request(metadata=meta)
        yield Request(chunk=b"abc")
        yield Request(metadata=meta)

    for requests in (chunk_first(), nothing(), metadata_twice()):
        error = await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.UploadAsset(requests, metadata=tenant_metadata(TENANT)),
        )
        assert "metadata" in (error.details() or "")
    assert await storage.row_count() == 0
    assert storage.blobs.staged() == []


async def test_a_refusal_reaches_a_client_still_writing(storage: Storage) -> None:
    # grpc.aio's client reports INTERNAL "Internal error from Core" instead of the status
    # when a write of its fails because the call has ended: storage reads the rest of a
    # refused upload first. Without that, about 1 such small call in 500 lost its status.
    stub = asset_service_pb2_grpc.AssetServiceStub(storage.channel)
    requests = [asset_service_pb2.UploadAssetRequest(chunk=bytes(1000))] * 4
    codes: Counter[str] = Counter()
    for _ in range(1500):
        try:
            await stub.UploadAsset(iter(requests), metadata=tenant_metadata(TENANT))
        except grpc.aio.AioRpcError as exc:
            codes[f"{exc.code().name}: {exc.details()}"] += 1
    assert codes == {
        "INVALID_ARGUMENT: the first message of an upload must carry its metadata": 1500
    }


async def test_a_refusal_with_megabytes_left_to_send_keeps_its_status(storage: Storage) -> None:
    # Refused early, with far more still to write: every such upload answered INTERNAL
    # before, whether over the limit or with bad metadata, and the HTTP bridge made 500s of
    # what should be 413s and 400s.
    data = bytes(16 * MAX_UPLOAD_BYTES)
    for _ in range(10):
        refused = await expect_code(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            storage.client.upload(data, tenant=TENANT, media_type="application/x-test"),
        )
        assert reason_of(refused) == TOO_LARGE
        await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            storage.client.upload(
                data, tenant=TENANT, media_type="application/x-test", filename="x" * 5000
            ),
        )
    assert await storage.row_count() == 0
    assert storage.blobs.staged() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"media_type": "image"},
        {"media_type": "image/png/x"},
        {"media_type": "image/ png"},
        {"media_type": "text/plain; charset"},
        {"media_type": "text/plain", "filename": "a\x00b"},
        {"media_type": "text/plain", "role": 42},
    ],
)
async def test_bad_metadata_is_invalid(storage: Storage, kwargs: dict[str, object]) -> None:
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        storage.client.upload(b"abc", tenant=TENANT, **kwargs),  # type: ignore[arg-type]
    )
    assert await storage.row_count() == 0


async def test_empty_upload_is_invalid(storage: Storage) -> None:
    error = await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        storage.client.upload(b"", tenant=TENANT, media_type="text/plain"),
    )
    assert "no bytes" in (error.details() or "")
    assert storage.blobs.staged() == []


async def test_unknown_asset_is_not_found(storage: Storage) -> None:
    client = storage.client
    await expect_code(grpc.StatusCode.NOT_FOUND, client.get("a_missing", tenant=TENANT))
    # No id at all is a bad request, as GetJob's empty job_id is.
    await expect_code(grpc.StatusCode.INVALID_ARGUMENT, client.get("", tenant=TENANT))
    await expect_code(grpc.StatusCode.NOT_FOUND, client.download("a_missing", tenant=TENANT))
    # PostgreSQL refuses a NUL in text: looked up, it was an INTERNAL error.
    await expect_code(grpc.StatusCode.NOT_FOUND, client.get("a_\x00", tenant=TENANT))
    await expect_code(grpc.StatusCode.NOT_FOUND, client.download("a_\x00", tenant=TENANT))


async def test_another_tenant_cannot_read(storage: Storage) -> None:
    asset = await storage.client.upload(b"secret", tenant=TENANT, media_type="text/plain")
    client = storage.client
    await expect_code(grpc.StatusCode.NOT_FOUND, client.get(asset.id, tenant="other"))
    await expect_code(grpc.StatusCode.NOT_FOUND, client.download(asset.id, tenant="other"))
    # The same bytes uploaded by another tenant are that tenant's own asset.
    theirs = await client.upload(b"secret", tenant="other", media_type="text/plain")
    assert theirs.id != asset.id and theirs.tenant_id == "other"
    assert len(storage.blob_files()) == 1  # content-addressed: one blob, two rows


async def test_calls_without_tenant_use_the_default_tenant(storage: Storage) -> None:
    stub = asset_service_pb2_grpc.AssetServiceStub(storage.channel)
    asset = await storage.client.upload(b"x", tenant="default", media_type="text/plain")
    response = await stub.GetAsset(asset_service_pb2.GetAssetRequest(asset_id=asset.id))
    assert response.asset.tenant_id == "default"


async def test_idempotency_key_returns_the_first_asset(storage: Storage) -> None:
    client = storage.client
    first = await client.upload(
        b"first", tenant=TENANT, media_type="text/plain", idempotency_key="job-1/out-0"
    )
    # A retry, even one with different (and larger) bytes, gets the first asset back.
    again = await client.upload(
        os.urandom(500_000),
        tenant=TENANT,
        media_type="text/plain",
        idempotency_key="job-1/out-0",
    )
    assert again == first
    assert await storage.row_count() == 1
    assert len(storage.blob_files()) == 1
    # Keys are per tenant, and uploads without a key never collide.
    other = await client.upload(
        b"first", tenant="other", media_type="text/plain", idempotency_key="job-1/out-0"
    )
    assert other.id != first.id
    a = await client.upload(b"first", tenant=TENANT, media_type="text/plain")
    b = await client.upload(b"first", tenant=TENANT, media_type="text/plain")
    assert len({first.id, other.id, a.id, b.id}) == 4
    assert await storage.row_count() == 4


@pytest.mark.parametrize("client", ["AssetClient", "raw stub"])
async def test_a_repeat_answered_before_its_bytes_are_sent_is_a_success(
    storage: Storage, client: str
) -> None:
    # Storage answers a streamed repeat of a known key at once, with megabytes still to
    # come; a write that then fails must not turn that answer into an error. AssetClient
    # did (a worker's redelivered job re-uploads its outputs under their keys: every
    # redelivery of a job with an output over 1 MiB failed). A raw stub handed an
    # iterator keeps the answer already.
    key = "job-9/out-0"
    first = await storage.client.upload(
        b"first", tenant=TENANT, media_type="text/plain", idempotency_key=key
    )
    stub = asset_service_pb2_grpc.AssetServiceStub(storage.channel)
    meta = asset_service_pb2.UploadMetadata(media_type="text/plain", idempotency_key=key)
    chunk = asset_service_pb2.UploadAssetRequest(chunk=bytes(CHUNK_SIZE))
    requests = [asset_service_pb2.UploadAssetRequest(metadata=meta)]
    requests += [chunk] * (16 * MAX_UPLOAD_BYTES // CHUNK_SIZE)
    for _ in range(20):
        if client == "raw stub":
            answer = await stub.UploadAsset(iter(requests), metadata=tenant_metadata(TENANT))
            again = answer.asset
        else:
            again = await storage.client.upload(
                bytes(16 * MAX_UPLOAD_BYTES),
                tenant=TENANT,
                media_type="text/plain",
                idempotency_key=key,
            )
        assert again == first
    assert await storage.row_count() == 1


async def test_concurrent_uploads_with_one_key_make_one_asset(storage: Storage) -> None:
    data = os.urandom(300_000)
    results = await asyncio.gather(
        *(
            storage.client.upload(
                data, tenant=TENANT, media_type="application/x-test", idempotency_key="k"
            )
            for _ in range(6)
        )
    )
    assert len({r.id for r in results}) == 1
    assert await storage.row_count() == 1
    assert len(storage.blob_files()) == 1
    assert storage.blobs.staged() == []


async def test_racing_uploads_both_past_the_key_check(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """Both uploads get past any key lookup; the unique constraint picks the winner."""
    caplog.set_level(logging.DEBUG, logger="services.storage.core")
    started = 0
    both_started = asyncio.Event()

    async def gated(data: bytes) -> AsyncIterator[bytes]:
        # The store reads bytes only after its key lookup, so once both generators have
        # started, both uploads have seen "no such key".
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await both_started.wait()
        yield data

    meta = NewAsset(media_type="text/plain", idempotency_key="race")
    one, two = await asyncio.gather(
        storage.store.upload(TENANT, meta, gated(b"one" * 1000)),
        storage.store.upload(TENANT, meta, gated(b"two" * 1000)),
    )
    assert one == two
    assert "is a repeat of" in caplog.text
    assert await storage.row_count() == 1
    # The loser's different bytes were discarded: only the winner's blob remains.
    assert [p.name for p in storage.blob_files()] == [one.sha256]
    assert storage.blobs.staged() == []


async def test_health_and_reflection(storage: Storage) -> None:
    health = health_pb2_grpc.HealthStub(storage.channel)
    for service in ("", "genmesh.v1.AssetService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(storage.channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    response = await call.read()
    names = {s.name for s in response.list_services_response.service}
    assert "genmesh.v1.AssetService" in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_main_serves_and_exits_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    data_dir = tmp_path / "data"
    async with storage_process({"GENMESH_DATA_DIR": str(data_dir)}) as storage:
        lines = storage.lines
        async with grpc.aio.insecure_channel(storage.address) as channel:
            client = AssetClient(channel)
            asset = await client.upload(png_bytes(4, 3), tenant=TENANT, media_type="image/png")
            assert await client.download(asset.id, tenant=TENANT) == png_bytes(4, 3)
            health = health_pb2_grpc.HealthStub(channel)
            check = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert await storage.stop(sig) == 0, "\n".join(lines)
    assert any("storage stopped" in line for line in lines), "\n".join(lines)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert (data_dir / "storage.db").exists()
    assert (data_dir / "blobs" / asset.sha256[:2] / asset.sha256[2:4] / asset.sha256).exists()


async def test_a_full_disk_is_resource_exhausted_not_an_internal_error(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.blobs, "put_bytes", full)
    refused = await expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        storage.client.upload(b"any bytes", tenant=TENANT, media_type="text/plain"),
    )
    # Retryable, unlike a size limit: a worker storing an output waits and tries again.
    assert reason_of(refused) != TOO_LARGE
    assert "disk is full" in (refused.details() or "")
    assert await storage.row_count() == 0


async def test_a_clean_up_queued_behind_busy_threads_runs_though_its_await_is_cancelled(
    tmp_path: Path,
) -> None:
    # The unlink of a failed upload's staging file, like a blob file's close, may wait in the
    # thread pool's queue; a cancellation landing then must not withdraw it.
    leftovers = [tmp_path / f"staged-{n}" for n in range(20)]
    async with busy_threads():
        cleanups = []
        for path in leftovers:
            path.write_bytes(b"partial upload")
            cleanups.append(
                asyncio.create_task(settled(asyncio.to_thread(path.unlink, missing_ok=True)))
            )
        await asyncio.sleep(0)
        for cleanup in cleanups:
            cleanup.cancel()
        outcomes = await asyncio.gather(*cleanups, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert [path for path in leftovers if path.exists()] == []
