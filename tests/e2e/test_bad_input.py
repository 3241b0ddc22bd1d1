"""Bad requests get a clear status and leave nothing behind."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from genmesh.v1 import (
    asset_service_pb2,
    asset_service_pb2_grpc,
    generate_service_pb2,
    job_pb2,
    job_service_pb2,
)
from services.common.parameters import dict_to_struct
from tests.mesh import Mesh


async def rejected(mesh: Mesh, spec: job_pb2.JobSpec) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))
    return err.value


@pytest.mark.parametrize(
    ("spec", "code", "needle"),
    [
        (job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt=""), "INVALID_ARGUMENT", "empty"),
        (
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="x" * 10_001),
            "INVALID_ARGUMENT",
            "10,000",
        ),
        (job_pb2.JobSpec(task=job_pb2.TASK_UNSPECIFIED, prompt="fox"), "INVALID_ARGUMENT", "task"),
        (job_pb2.JobSpec(task=99, prompt="fox"), "INVALID_ARGUMENT", "task"),  # type: ignore[arg-type]
        (
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="fox", provider="nope"),
            "INVALID_ARGUMENT",
            "unknown provider",
        ),
        (job_pb2.JobSpec(task=job_pb2.TASK_IMAGE_TO_TEXT), "INVALID_ARGUMENT", "input asset"),
        (
            job_pb2.JobSpec(task=job_pb2.TASK_IMAGE_TO_TEXT, input_asset_ids=["a_missing"]),
            "NOT_FOUND",
            "a_missing",
        ),
        (
            job_pb2.JobSpec(task=job_pb2.TASK_IMAGE_TO_TEXT, input_asset_ids=[""]),
            "INVALID_ARGUMENT",
            "asset_id is required",
        ),
        (
            job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="fox",
                parameters=dict_to_struct({"width": 99999}),
            ),
            "INVALID_ARGUMENT",
            "width",
        ),
        (
            job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="fox",
                parameters=dict_to_struct({"colour": "red"}),
            ),
            "INVALID_ARGUMENT",
            "colour",
        ),
        # A Struct carries NaN and infinity, JSON does not: reading them was INTERNAL.
        (
            job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="fox",
                parameters=dict_to_struct({"seed": math.inf}),
            ),
            "INVALID_ARGUMENT",
            "parameters",
        ),
        (
            job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="fox",
                parameters=dict_to_struct({"width": [math.nan]}),
            ),
            "INVALID_ARGUMENT",
            "parameters",
        ),
        # PostgreSQL refuses a NUL in text: the key was an INTERNAL error there.
        (
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="fox", idempotency_key="k\x00"),
            "INVALID_ARGUMENT",
            "idempotency_key",
        ),
        # A deadline past year 9999 cannot be a Timestamp: it was INTERNAL.
        (
            job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="fox",
                timeout=duration_pb2.Duration(seconds=315_576_000_000),
            ),
            "INVALID_ARGUMENT",
            "timeout",
        ),
        # The wrong type is named as the caller wrote it, in JSON: it read "got None".
        (
            job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="fox",
                parameters=dict_to_struct({"seed": None}),
            ),
            "INVALID_ARGUMENT",
            "parameter 'seed' must be an integer, got null",
        ),
        # Enum values the contract does not define were stored as sent: the bridge could not
        # render such a job (GET and every list holding it were 500), nor admission hold it.
        (
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="fox", priority=9),  # type: ignore[arg-type]
            "INVALID_ARGUMENT",
            "priority 9",
        ),
        (
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_IMAGE, prompt="fox", routing_policy=9),  # type: ignore[arg-type]
            "INVALID_ARGUMENT",
            "routing_policy 9",
        ),
        (
            job_pb2.JobSpec(
                task=job_pb2.TASK_TEXT_TO_IMAGE,
                prompt="fox",
                provider="sandbox",
                provider_preference=7,  # type: ignore[arg-type]
            ),
            "INVALID_ARGUMENT",
            "provider_preference 7",
        ),
        (
            job_pb2.JobSpec(
                prompt="a paper boat",
                priority=-1,  # type: ignore[arg-type]
                pipeline=job_pb2.PipelineSpec(name="text-to-video"),
            ),
            "INVALID_ARGUMENT",
            "priority -1",
        ),
        # A draft is made for image and video only; asked of another task it was ignored.
        (
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_TEXT, prompt="fox", draft_first=True),
            "INVALID_ARGUMENT",
            "draft_first applies to text-to-image, image-to-image and image-to-video, "
            "not text-to-text",
        ),
        (
            job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_SPEECH, prompt="fox", draft_first=True),
            "INVALID_ARGUMENT",
            "not text-to-speech",
        ),
        (
            job_pb2.JobSpec(
                prompt="a fox",
                draft_first=True,
                pipeline=job_pb2.PipelineSpec(
                    steps=[
                        job_pb2.PipelineStep(
                            name="words", task=job_pb2.TASK_TEXT_TO_TEXT, prompt="{prompt}"
                        ),
                        job_pb2.PipelineStep(
                            name="say", task=job_pb2.TASK_TEXT_TO_SPEECH, prompt="{words}"
                        ),
                    ]
                ),
            ),
            "INVALID_ARGUMENT",
            "draft_first applies to text-to-image, image-to-image and image-to-video steps, "
            "and this pipeline has none",
        ),
    ],
    ids=[
        "empty",
        "too-long",
        "no-task",
        "unknown-task",
        "unknown-provider",
        "missing-input",
        "missing-asset",
        "empty-asset-id",
        "param-range",
        "unknown-param",
        "infinite-param",
        "nan-param",
        "nul-key",
        "endless-timeout",
        "null-param",
        "unknown-priority",
        "unknown-policy",
        "unknown-preference",
        "pipeline-unknown-priority",
        "draft-of-text",
        "draft-of-speech",
        "draft-of-pipeline-without-pictures",
    ],
)
async def test_rejected_and_nothing_written(
    mesh: Mesh, spec: job_pb2.JobSpec, code: str, needle: str
) -> None:
    err = await rejected(mesh, spec)
    assert err.code().name == code
    assert needle in (err.details() or "")
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert list(listed.jobs) == []


async def test_exactly_10000_characters_is_accepted(mesh: Mesh) -> None:
    reply = await mesh.generate.Submit(
        generate_service_pb2.SubmitRequest(
            spec=job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_TEXT, prompt="y" * 10_000)
        )
    )
    assert reply.job.state == job_pb2.JOB_STATE_QUEUED


async def test_wrong_input_media_type(mesh: Mesh) -> None:
    text = await mesh.assets.upload(b"just text", tenant="default", media_type="text/plain")
    err = await rejected(
        mesh, job_pb2.JobSpec(task=job_pb2.TASK_IMAGE_TO_TEXT, input_asset_ids=[text.id])
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "text/plain" in (err.details() or "")


async def test_more_than_one_input_asset_is_refused(mesh: Mesh) -> None:
    # JobSpec: tasks that take an input need exactly one; a second was stored and ignored.
    first = await mesh.assets.upload(b"one", tenant="default", media_type="image/png")
    second = await mesh.assets.upload(b"two", tenant="default", media_type="image/png")
    err = await rejected(
        mesh,
        job_pb2.JobSpec(task=job_pb2.TASK_IMAGE_TO_TEXT, input_asset_ids=[first.id, second.id]),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one input asset" in (err.details() or "")
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert list(listed.jobs) == []


def token(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage!!",
        "bm90IGpzb24",
        "WzEsMl0",
        # Each was INTERNAL: float() overflowed, json recursed too deep, PostgreSQL refused NUL.
        token(json.dumps([10**400, "j_1"])),
        token("[" * 100_000),
        token(json.dumps([1.0, "j_\x00"])),
    ],
)
async def test_malformed_page_token(mesh: Mesh, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (err.value.details() or "")


# A NUL among them: PostgreSQL refuses one in text, and each lookup was an INTERNAL error there.
@pytest.mark.parametrize("job_id", ["j_nope", "j_\x00"], ids=["unknown", "nul"])
async def test_unknown_job(mesh: Mesh, job_id: str) -> None:
    for call in (
        mesh.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id)),
        mesh.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for stream in (
        mesh.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id)),
        mesh.jobs.WatchBatch(job_service_pb2.WatchBatchRequest(batch_id=job_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stream:
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(batch_id=job_id))
    assert list(listed.jobs) == []


async def test_a_batch_key_with_nul_is_invalid_and_nothing_written(mesh: Mesh) -> None:
    # Looked up before the spec's own checks, the key was an INTERNAL error on PostgreSQL.
    spec = job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_TEXT, prompt="fox", idempotency_key="k\x00")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.generate.SubmitBatch(generate_service_pb2.SubmitBatchRequest(specs=[spec]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("specs[0]: idempotency_key")
    assert list((await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())).jobs) == []


async def test_negative_after_sequence(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in mesh.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(job_id="j_x", after_sequence=-1)
        ):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_request_protobuf_cannot_parse_is_invalid_argument(mesh: Mesh) -> None:
    # Each was UNKNOWN with the DecodeError's text: gRPC answers so for a raising deserializer.
    deep: Any = "fox"
    for _ in range(60):  # a Value per list level: past protobuf's parse depth of 100
        deep = [deep]
    request = generate_service_pb2.SubmitRequest()
    request.spec.task = job_pb2.TASK_TEXT_TO_IMAGE
    request.spec.prompt = "fox"
    request.spec.parameters.update({"seed": deep})
    submit = mesh.router_channel.unary_unary("/genmesh.v1.GenerateService/Submit")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(request.SerializeToString())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be parsed" in (err.value.details() or "")
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert list(listed.jobs) == []
    # A client stream: UploadAsset's metadata with a filename that is not UTF-8.
    upload = mesh.storage_channel.stream_unary("/genmesh.v1.AssetService/UploadAsset")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(iter([b"\x0a\x03\x12\x01\xff", b"\x12\x01x"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_empty_or_undefined_id_or_filter_is_invalid_argument(mesh: Mesh) -> None:
    # As GetJob's empty job_id is, and as REST refuses them: not NOT_FOUND, not an empty list.
    storage = asset_service_pb2_grpc.AssetServiceStub(mesh.storage_channel)
    calls = [
        mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(states=[99])),  # type: ignore[list-item]
        mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(task=99)),  # type: ignore[arg-type]
        storage.GetAsset(asset_service_pb2.GetAssetRequest(asset_id="")),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    for stream, needle in (
        (mesh.jobs.WatchBatch(job_service_pb2.WatchBatchRequest(batch_id="")), "batch_id"),
        (
            storage.DownloadAsset(asset_service_pb2.DownloadAssetRequest(asset_id="")),
            "asset_id",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stream:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{needle} is required" in (err.value.details() or "")
