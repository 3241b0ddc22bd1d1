"""A running job's storage calls against a real AssetService: retried while storage is out
of reach, then classified so the job is handed back, refused or failed with a clear reason."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from genmesh.v1 import job_pb2
from services.providers import storage_calls
from services.providers.adapter import ProviderError
from services.providers.budget import provider_at_fault
from services.providers.storage_calls import STORAGE_UNAVAILABLE, with_storage
from services.storage.app import running_storage
from services.storage.client import AssetClient
from services.storage.settings import Settings as StorageSettings
from tests.infra import free_port
from tests.storage.conftest import MAX_UPLOAD_BYTES, Storage


async def test_storage_out_of_reach_past_the_patience_hands_the_job_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_calls, "PATIENCE", 0.5)
    calls = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nobody:
        client = AssetClient(nobody)

        async def upload() -> object:
            nonlocal calls
            calls += 1
            return await client.upload(b"x", tenant="t", media_type="text/plain")

        with pytest.raises(ProviderError) as failed:
            await with_storage("store out.txt", upload)
    error = failed.value
    assert calls > 1  # retried before giving up
    assert (error.kind, error.code) == (job_pb2.ERROR_KIND_RETRYABLE, STORAGE_UNAVAILABLE)
    assert "could not store out.txt: storage unavailable (UNAVAILABLE" in error.message
    # The provider did its part: its health is not held against it.
    assert not provider_at_fault(error)


async def test_refusals_are_not_retried_and_say_what_was_refused(storage: Storage) -> None:
    calls = 0

    async def too_large() -> object:
        nonlocal calls
        calls += 1
        data = os.urandom(MAX_UPLOAD_BYTES + 1)
        return await storage.client.upload(data, tenant="t", media_type="application/x-test")

    with pytest.raises(ProviderError) as refused:
        await with_storage("store big.bin", too_large)
    assert calls == 1
    assert (refused.value.kind, refused.value.code) == (job_pb2.ERROR_KIND_FATAL, "storage_refused")
    said = refused.value.message
    assert "could not store big.bin: storage refused it (RESOURCE_EXHAUSTED" in said

    with pytest.raises(ProviderError) as missing:
        await with_storage("read input asset 'a_x'", lambda: storage.client.get("a_x", tenant="t"))
    assert missing.value.kind == job_pb2.ERROR_KIND_INVALID_INPUT
    assert missing.value.code == "input_not_found"


async def test_a_batched_put_over_storages_limit_is_refused_at_once(tmp_path: Path) -> None:
    # Under 1 MiB, so it goes in a BatchPutAssets call, whose item error carries the reason.
    env = {
        "GENMESH_LISTEN": "127.0.0.1:0",
        "GENMESH_DATA_DIR": str(tmp_path),
        "GENMESH_STORAGE_MAX_UPLOAD_BYTES": "1000",
        "GENMESH_SHUTDOWN_GRACE": "1",
    }
    calls = 0
    async with (
        running_storage(StorageSettings.from_env(env)) as storage,
        grpc.aio.insecure_channel(storage.address) as channel,
    ):
        client = AssetClient(channel)

        async def put() -> object:
            nonlocal calls
            calls += 1
            return await client.upload(b"x" * 5000, tenant="t", media_type="application/x-test")

        with pytest.raises(ProviderError) as refused:
            await with_storage("store big.bin", put)
    assert calls == 1
    assert (refused.value.kind, refused.value.code) == (job_pb2.ERROR_KIND_FATAL, "storage_refused")
