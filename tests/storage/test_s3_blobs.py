"""Storage with its blobs in an S3-compatible object store (moto's S3 server on loopback)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from botocore.exceptions import ClientError

from genmesh.v1 import asset_pb2
from services.common.errors import Unavailable
from services.storage.app import open_blob_store
from services.storage.blobs import CHUNK_SIZE, BlobStoreError, blob_path
from services.storage.client import AssetClient
from services.storage.s3_blobs import EXPIRED, MAYBE_MISSING, REFUSED, S3BlobStore
from services.storage.settings import Settings
from tests.conftest import Database
from tests.fakes.object_store import REFUSALS, ObjectStore, refusing_object_store
from tests.infra import start_failure
from tests.storage.conftest import (
    IN_MEMORY_BYTES,
    Serving,
    cancelled_downloads,
    download_messages,
    serving_storage,
    storage_process,
)

TENANT = "t_s3"


def settings(store_url: str, bucket: str, data_dir: Path, prefix: str = "") -> Settings:
    return Settings.from_env(
        {
            "GENMESH_DATA_DIR": str(data_dir),
            "GENMESH_STORAGE_S3_BUCKET": bucket,
            "GENMESH_STORAGE_S3_ENDPOINT_URL": store_url,
            "GENMESH_STORAGE_S3_PREFIX": prefix,
        }
    )


@asynccontextmanager
async def s3_blobs(
    url: str, bucket: str, tmp_path: Path, prefix: str = ""
) -> AsyncIterator[S3BlobStore]:
    blobs, _ = await open_blob_store(settings(url, bucket, tmp_path, prefix))
    assert isinstance(blobs, S3BlobStore)
    try:
        yield blobs
    finally:
        blobs.close()


@pytest.fixture
async def on_s3(
    database: Database, object_store: ObjectStore, tmp_path: Path
) -> AsyncIterator[tuple[Serving, S3BlobStore]]:
    bucket = object_store.new_bucket()
    async with (
        s3_blobs(object_store.endpoint_url, bucket, tmp_path, prefix="mesh/") as blobs,
        serving_storage(database, blobs) as running,
    ):
        yield running, blobs


async def upload(running: Serving, data: bytes, **kwargs: object) -> asset_pb2.Asset:
    return await running.client.upload(
        data,
        tenant=TENANT,
        media_type="application/x-test",
        role=asset_pb2.ASSET_ROLE_OUTPUT,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("size", [1000, IN_MEMORY_BYTES + 5000], ids=["in-memory", "spooled"])
async def test_an_upload_is_stored_whole_in_the_bucket_and_downloads_byte_identical(
    on_s3: tuple[Serving, S3BlobStore], object_store: ObjectStore, size: int
) -> None:
    running, blobs = on_s3
    data = os.urandom(size)
    sha256 = hashlib.sha256(data).hexdigest()

    asset = await upload(running, data)

    assert (asset.sha256, asset.size_bytes) == (sha256, size)
    assert await running.client.download(asset.id, tenant=TENANT) == data
    assert (
        await running.client.download(asset.id, tenant=TENANT, offset=7, length=300)
        == (data[7:307])
    )
    assert await running.client.download(asset.id, tenant=TENANT, offset=size - 9) == data[-9:]
    # One object under the prefix, named by its hash, and the store was given that hash to
    # check the bytes against.
    s3 = object_store.client()
    listing = s3.list_objects_v2(Bucket=blobs.bucket)
    assert [o["Key"] for o in listing["Contents"]] == [f"mesh/{blob_path(sha256)}"]
    head = s3.head_object(
        Bucket=blobs.bucket, Key=f"mesh/{blob_path(sha256)}", ChecksumMode="ENABLED"
    )
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == sha256
    assert blobs.staged() == []


async def test_the_same_bytes_twice_are_one_object(
    on_s3: tuple[Serving, S3BlobStore], object_store: ObjectStore
) -> None:
    running, blobs = on_s3
    data = os.urandom(IN_MEMORY_BYTES + 1)
    first, second = await upload(running, data), await upload(running, data)

    assert first.id != second.id
    assert await running.client.download(second.id, tenant=TENANT) == data
    assert object_store.client().list_objects_v2(Bucket=blobs.bucket)["KeyCount"] == 1
    assert blobs.staged() == []


async def test_an_asset_whose_object_is_gone_is_data_loss_before_any_message(
    on_s3: tuple[Serving, S3BlobStore], object_store: ObjectStore
) -> None:
    running, blobs = on_s3
    asset = await upload(running, b"deleted behind storage's back")
    object_store.client().delete_object(Bucket=blobs.bucket, Key=f"mesh/{blob_path(asset.sha256)}")

    received, failed = await download_messages(running.channel, asset.id, tenant=TENANT)

    assert received == []
    assert failed is not None and failed.code() == grpc.StatusCode.DATA_LOSS
    assert f"the bytes of asset {asset.id} are missing from storage" in (failed.details() or "")


async def test_cancelled_downloads_leave_no_response_open(
    database: Database, object_store: ObjectStore, tmp_path: Path
) -> None:
    # A download cancelled while its GET was still going in a thread dropped the answer the
    # thread then got, its body unread and unclosed, for the garbage collector to find.
    responses: list[Any] = []
    async with s3_blobs(object_store.endpoint_url, object_store.new_bucket(), tmp_path) as blobs:
        events = blobs._client.meta.events
        # A store some way off: each GET takes a while, so cancellations land during some.
        events.register("before-send.s3.GetObject", lambda **_: time.sleep(0.1))
        events.register(
            "after-call.s3.GetObject", lambda http_response, **_: responses.append(http_response)
        )
        async with serving_storage(database, blobs) as running:
            asset = await upload(running, os.urandom(5 * CHUNK_SIZE))
            await cancelled_downloads(running.channel, asset.id, tenant=TENANT)
        # Stopped, so every handler has ended.
    assert responses
    unclosed = [r for r in responses if not r.raw.closed]
    assert not unclosed, f"{len(unclosed)} of {len(responses)} GET responses left open"


async def test_a_blob_whose_row_failed_is_kept_for_the_other_replicas(
    on_s3: tuple[Serving, S3BlobStore], object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another storage replica may be storing the same bytes for a row of its own: this one
    # cannot know the blob is unused, so it must not delete it.
    running, blobs = on_s3

    async def broken(row: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(running.store._rows, "submit", broken)
    data = os.urandom(2000)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await upload(running, data)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert await running.row_count() == 0
    assert await blobs.exists(hashlib.sha256(data).hexdigest())


async def test_an_object_store_that_does_not_answer_is_unavailable_and_nothing_is_kept(
    database: Database, object_store: ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = object_store.new_bucket()
    async with (
        s3_blobs(object_store.endpoint_url, bucket, tmp_path) as blobs,
        serving_storage(database, blobs) as running,
    ):
        stored = await upload(running, b"kept before the outage")
    # The same bucket through an address where nothing listens (port 1).
    async with (
        s3_blobs("http://127.0.0.1:1", bucket, tmp_path) as away,
        serving_storage(database, away) as running,
    ):
        for data in (b"small", os.urandom(IN_MEMORY_BYTES + 10)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await upload(running, data)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # The client is told what to do, not where the store is.
            assert refused.value.details() == "the object store did not answer; retry later"
        with pytest.raises(grpc.aio.AioRpcError) as unread:
            await running.client.download(stored.id, tenant=TENANT)
        assert unread.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await running.row_count() == 1
        assert away.staged() == []
    # The operator is: the log names the address.
    assert "127.0.0.1:1" in caplog.text


# Credentials whose every part S3's error bodies may echo, and none of which may be repeated.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAKEYIDTHATMUSTNOTLEAK",
    "AWS_SECRET_ACCESS_KEY": "SECRET-KEY-THAT-MUST-NOT-LEAK",
    "AWS_SESSION_TOKEN": "SESSION-TOKEN-THAT-MUST-NOT-LEAK",
}


@pytest.fixture
def secret_credentials(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """SECRETS as storage's credentials (the fake object store takes any)."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("code", REFUSALS)
async def test_credentials_refused_at_run_time_are_a_clear_status_without_secrets(
    database: Database,
    object_store: ObjectStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    secret_credentials: None,
    code: str,
) -> None:
    # They surfaced as INTERNAL "internal error", with S3's body (which echoes the key id and
    # the session token) in a logged traceback.
    bucket = object_store.new_bucket()
    async with (
        s3_blobs(object_store.endpoint_url, bucket, tmp_path) as blobs,
        serving_storage(database, blobs) as running,
    ):
        stored = await upload(running, b"stored while the credentials were good")
    if code == "ExpiredToken":
        # Renewed credentials may work on the next try: a worker retries.
        expected, said = grpc.StatusCode.UNAVAILABLE, EXPIRED.format(code=code)
    else:
        # Nothing the caller does helps until an operator fixes storage's configuration.
        expected, said = grpc.StatusCode.FAILED_PRECONDITION, REFUSED.format(code=code)
    async with (
        refusing_object_store(code) as url,
        s3_blobs(url, bucket, tmp_path) as refusing,
        serving_storage(database, refusing) as running,
    ):
        caplog.clear()
        calls = {
            "put": upload(running, b"small"),
            "spooled upload": upload(running, os.urandom(IN_MEMORY_BYTES + 10)),
            "download": running.client.download(stored.id, tenant=TENANT),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            if name == "download" and code == "AccessDenied":
                # What a role that may not list the bucket is told for a missing object too.
                said += MAYBE_MISSING
            assert (refused.value.code(), refused.value.details()) == (expected, said), name
        assert refusing.staged() == []
    warnings = [r for r in caplog.records if r.name == "services.storage.s3_blobs"]
    assert [r.levelno for r in warnings] == [logging.WARNING] * 3, caplog.text
    assert all(code in r.getMessage() for r in warnings)
    assert "Traceback" not in caplog.text
    for secret in SECRETS.values():
        assert secret not in caplog.text


async def storage_refused_at_start(code: str, bucket: str, tmp_path: Path) -> str:
    """What a storage process started on a store that refuses everything with `code` says
    as it fails to start."""
    async with refusing_object_store(code, at_start=True) as url:
        return await asyncio.to_thread(
            start_failure,
            "services.storage",
            {
                "GENMESH_DATA_DIR": str(tmp_path),
                "GENMESH_STORAGE_S3_BUCKET": bucket,
                "GENMESH_STORAGE_S3_ENDPOINT_URL": url,
            },
        )


async def test_an_expired_token_at_start_up_is_named_without_secrets(
    tmp_path: Path, secret_credentials: None
) -> None:
    # S3 refuses a HEAD without a body to say why, so storage said only that the bucket
    # "answered HTTP 400".
    said = await storage_refused_at_start("ExpiredToken", "expired", tmp_path)
    assert f"cannot start: bucket 'expired': {EXPIRED.format(code='ExpiredToken')}" in said, said
    assert "Traceback" not in said
    for secret in SECRETS.values():
        assert secret not in said


async def test_a_bucket_refused_at_start_up_for_another_reason_names_s3s_code(
    tmp_path: Path, secret_credentials: None
) -> None:
    said = await storage_refused_at_start("AuthorizationHeaderMalformed", "elsewhere", tmp_path)
    expected = "bucket 'elsewhere' answered HTTP 400 (AuthorizationHeaderMalformed)"
    assert f"cannot start: {expected}" in said, said
    assert "Traceback" not in said


async def test_a_role_that_may_not_list_the_bucket_can_still_store(
    database: Database, object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3 answers HeadBucket, and a HEAD for a missing object, with 403 to a role without
    # s3:ListBucket; such a role may still put and get objects.
    def forbidden(operation: str) -> Callable[..., object]:
        def refuse(*args: object, **kwargs: object) -> object:
            error = {"Code": "403", "Message": "Forbidden"}
            raise ClientError(
                {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}, operation
            )

        return refuse

    real_client = S3BlobStore.from_settings
    heads: dict[str, Callable[..., object]] = {}

    def limited(settings: Settings, staging: Path) -> S3BlobStore:
        store = real_client(settings, staging)
        heads["object"] = store._client.head_object
        monkeypatch.setattr(store._client, "head_bucket", forbidden("HeadBucket"))
        monkeypatch.setattr(store._client, "head_object", forbidden("HeadObject"))
        return store

    monkeypatch.setattr(S3BlobStore, "from_settings", limited)
    bucket = object_store.new_bucket()
    async with (
        s3_blobs(object_store.endpoint_url, bucket, tmp_path) as blobs,
        serving_storage(database, blobs) as running,
    ):
        data = os.urandom(3000)
        asset = await upload(running, data)
        assert await running.client.download(asset.id, tenant=TENANT) == data


async def test_start_up_checks_the_bucket(object_store: ObjectStore, tmp_path: Path) -> None:
    missing = settings(object_store.endpoint_url, "no-such-bucket", tmp_path)
    with pytest.raises(BlobStoreError, match="bucket 'no-such-bucket' does not exist"):
        await open_blob_store(missing)
    with pytest.raises(BlobStoreError, match="cannot be used as configured"):
        await open_blob_store(settings(object_store.endpoint_url, "no/such/name", tmp_path))
    # A store that does not answer yet is not fatal: calls say UNAVAILABLE until it does.
    away = settings("http://127.0.0.1:1", "later", tmp_path)
    blobs, where = await open_blob_store(away)
    try:
        assert where == "bucket 'later' at http://127.0.0.1:1"
        with pytest.raises(Unavailable):
            await blobs.exists("0" * 64)
    finally:
        blobs.close()


async def test_start_up_without_credentials_is_a_clear_error(
    object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    # Nor a profile or an instance role to find them in.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = object_store.new_bucket()
    with pytest.raises(BlobStoreError, match="Unable to locate credentials"):
        await open_blob_store(settings(object_store.endpoint_url, bucket, tmp_path))


def test_storage_with_a_missing_bucket_exits_with_a_clear_message(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    said = start_failure(
        "services.storage",
        {
            "GENMESH_DATA_DIR": str(tmp_path),
            "GENMESH_STORAGE_S3_BUCKET": "no-such-bucket",
            "GENMESH_STORAGE_S3_ENDPOINT_URL": object_store.endpoint_url,
        },
    )
    assert "cannot start: bucket 'no-such-bucket' does not exist" in said
    assert "Traceback" not in said


async def test_credentials_stay_out_of_the_log_even_at_debug(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    token = "SESSION-TOKEN-THAT-MUST-NOT-LEAK"
    settings = {
        "GENMESH_DATA_DIR": str(tmp_path),
        "GENMESH_LOG_LEVEL": "DEBUG",
        "GENMESH_STORAGE_S3_BUCKET": object_store.new_bucket(),
        "GENMESH_STORAGE_S3_ENDPOINT_URL": object_store.endpoint_url,
        "AWS_SESSION_TOKEN": token,
    }
    async with storage_process(settings) as storage:
        async with grpc.aio.insecure_channel(storage.address) as channel:
            client = AssetClient(channel)
            asset = await client.upload(b"signed requests", tenant=TENANT, media_type="text/plain")
            assert await client.download(asset.id, tenant=TENANT) == b"signed requests"
        assert await storage.stop() == 0
    lines = storage.lines
    log = "\n".join(lines)
    assert "DEBUG" in log  # the level took
    assert token not in log
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in log
