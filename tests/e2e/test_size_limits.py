"""Size limits on jobs: whatever the router accepts fits every message the job later travels
in (the NATS message to its worker, replies to clients with default limits), and whatever
it refuses leaves nothing behind. Before these limits a 5 MiB idempotency key stored a job
that could never be dispatched and answered INTERNAL, and on PostgreSQL a 65-character
tenant name was an INTERNAL error."""

from __future__ import annotations

import grpc
import pytest

from genmesh.v1 import generate_service_pb2, job_pb2, job_service_pb2
from services.common.errors import TOO_LARGE, reason_of
from services.common.parameters import dict_to_struct
from services.common.tenancy import MAX_TENANT, TENANT_HEADER, tenant_metadata
from services.router import limits
from tests.mesh import Mesh

IMAGE = job_pb2.TASK_TEXT_TO_IMAGE


def spec(**fields: object) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(**{"task": IMAGE, "prompt": "a fox", **fields})  # type: ignore[arg-type]


async def submit_error(mesh: Mesh, job_spec: job_pb2.JobSpec) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=job_spec))
    return err.value


async def no_jobs(mesh: Mesh) -> None:
    listed = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert list(listed.jobs) == []


@pytest.mark.parametrize(
    ("oversize", "field"),
    [
        (spec(input_asset_ids=["a_" + "0" * 30] * 10_000), "input_asset_ids"),
        (spec(parameters=dict_to_struct({"fail_kind": "x" * 300_000})), "parameters"),
        (spec(provider="p" * 300_000), "provider"),
    ],
    ids=["input-ids", "parameters", "provider"],
)
async def test_an_oversize_spec_is_too_large_and_nothing_is_written(
    mesh: Mesh, oversize: job_pb2.JobSpec, field: str
) -> None:
    err = await submit_error(mesh, oversize)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(err) == TOO_LARGE  # the bridge's 413, not "retry later"
    details = err.details() or ""
    assert f"{limits.MAX_SPEC_BYTES:,}" in details and field in details
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in mesh.generate.Generate(generate_service_pb2.GenerateRequest(spec=oversize)):
            pass
    assert streamed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as batched:
        await mesh.generate.SubmitBatch(
            generate_service_pb2.SubmitBatchRequest(specs=[spec(), oversize])
        )
    assert batched.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (batched.value.details() or "").startswith("specs[1]: ")
    await no_jobs(mesh)


async def test_a_long_prompt_is_judged_by_its_own_limit_not_the_spec_size(mesh: Mesh) -> None:
    # 10,000 four-byte characters: 40 KB, within the prompt limit (counted in characters).
    reply = await mesh.generate.Submit(
        generate_service_pb2.SubmitRequest(
            spec=job_pb2.JobSpec(task=job_pb2.TASK_TEXT_TO_TEXT, prompt="🦊" * 10_000)
        )
    )
    assert reply.job.state == job_pb2.JOB_STATE_QUEUED
    err = await submit_error(mesh, spec(prompt="🦊" * 100_000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "10,000" in (err.details() or "")


async def test_an_idempotency_key_is_at_most_200_characters(mesh: Mesh) -> None:
    err = await submit_error(mesh, spec(idempotency_key="k" * 201))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in (err.details() or "")
    huge = await submit_error(mesh, spec(idempotency_key="k" * 5_000_000))
    assert huge.code() == grpc.StatusCode.INVALID_ARGUMENT
    await no_jobs(mesh)
    # Exactly the column's width is stored and found again, on PostgreSQL too.
    first = await mesh.generate.Submit(
        generate_service_pb2.SubmitRequest(spec=spec(idempotency_key="é" * 200))
    )
    again = await mesh.generate.Submit(
        generate_service_pb2.SubmitRequest(spec=spec(idempotency_key="é" * 200))
    )
    assert again.job.id == first.job.id


async def test_a_message_echoing_a_huge_value_is_clipped_not_lost(mesh: Mesh) -> None:
    # 150 KB of two-byte characters: fits the spec, but echoed whole the status message
    # would pass the client's 16 KiB metadata limit and arrive as RESOURCE_EXHAUSTED.
    err = await submit_error(mesh, spec(parameters=dict_to_struct({"fail_kind": "é" * 75_000})))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    assert "fail_kind" in details and details.endswith(" …")
    assert len(details.encode()) <= 1024 + len(" …".encode())


def long_spec(n: int) -> job_pb2.JobSpec:
    # About 10 KB each as a stored job (the prompt is kept as sent and as sent on).
    return job_pb2.JobSpec(task=IMAGE, prompt=f"{n:02} " + "fox " * 1_800)


async def test_a_batch_whose_reply_would_be_too_large_is_refused_before_storing(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_REPLY_BYTES", 64 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.generate.SubmitBatch(
            generate_service_pb2.SubmitBatchRequest(specs=[long_spec(n) for n in range(10)])
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(err.value) == TOO_LARGE
    assert "fewer" in (err.value.details() or "")
    await no_jobs(mesh)
    done = await mesh.generate.SubmitBatch(
        generate_service_pb2.SubmitBatchRequest(specs=[long_spec(n) for n in range(5)])
    )
    assert len(done.jobs) == 5


async def test_job_pages_end_early_rather_than_pass_the_reply_limit(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_REPLY_BYTES", 64 * 1024)
    submitted: list[str] = []
    for first in range(0, 20, 5):
        reply = await mesh.generate.SubmitBatch(
            generate_service_pb2.SubmitBatchRequest(
                specs=[long_spec(n) for n in range(first, first + 5)]
            )
        )
        submitted += [job.id for job in reply.jobs]

    listed: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await mesh.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=500, page_token=token)
        )
        assert page.ByteSize() <= 64 * 1024
        listed += [job.id for job in page.jobs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages >= 4
    # Every job once, newest first (a batch's jobs share a create time, ordered by id).
    assert sorted(listed) == sorted(submitted)
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize("tenant", ["t" * 65, "no spaces", "-leading-dash"], ids=repr)
async def test_a_tenant_name_outside_the_pattern_is_invalid_everywhere(
    mesh: Mesh, tenant: str
) -> None:
    metadata = tenant_metadata(tenant)
    with pytest.raises(grpc.aio.AioRpcError) as submitted:
        await mesh.generate.Submit(
            generate_service_pb2.SubmitRequest(spec=spec()), metadata=metadata
        )
    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as uploaded:
        await mesh.assets.upload(b"abc", tenant=tenant, media_type="text/plain")
    for err in (submitted.value, listed.value, uploaded.value):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert TENANT_HEADER in (err.details() or "")
    await no_jobs(mesh)


async def test_the_longest_tenant_name_is_stored_and_scoped(mesh: Mesh) -> None:
    # 64 characters: the router's column on PostgreSQL, which refuses longer values outright.
    metadata = tenant_metadata("t" * MAX_TENANT)
    reply = await mesh.generate.Submit(
        generate_service_pb2.SubmitRequest(spec=spec()), metadata=metadata
    )
    assert reply.job.tenant_id == "t" * MAX_TENANT
    mine = await mesh.jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=metadata)
    assert [job.id for job in mine.jobs] == [reply.job.id]
    await no_jobs(mesh)  # the default tenant sees none of it


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def _with_unknown_field(job_spec: job_pb2.JobSpec, size: int) -> job_pb2.JobSpec:
    # Field 99, length-delimited, as a newer client might send it: unknown to this contract.
    job_spec.MergeFromString(_varint(99 << 3 | 2) + _varint(size) + b"u" * size)
    return job_spec


async def test_an_oversize_spec_of_unknown_fields_is_too_large_not_internal(mesh: Mesh) -> None:
    err = await submit_error(mesh, _with_unknown_field(spec(), 300_000))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "unknown fields" in (err.details() or "")
    await no_jobs(mesh)


def test_step_prompts_count_against_their_own_limit_not_the_spec_size() -> None:
    # 20 steps of 9,000 three-byte characters: 540 KB of prompts, each within its limit.
    steps = [
        job_pb2.PipelineStep(name=f"s{n}", task=job_pb2.TASK_TEXT_TO_TEXT, prompt="字" * 9_000)
        for n in range(20)
    ]
    limits.check_spec(job_pb2.JobSpec(prompt="x", pipeline=job_pb2.PipelineSpec(steps=steps)))
