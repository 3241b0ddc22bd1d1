"""Thin gRPC adapters over RouterCore: translate, call, translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from genmesh.v1 import (
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    provider_service_pb2,
    provider_service_pb2_grpc,
)
from services.common.tenancy import tenant_of
from services.router import limits
from services.router.batches import Batches
from services.router.core import RouterCore
from services.router.feed import FeedHub


class GenerateServicer(generate_service_pb2_grpc.GenerateServiceServicer):
    def __init__(self, core: RouterCore, batches: Batches) -> None:
        self._core = core
        self._batches = batches

    async def Submit(
        self, request: generate_service_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> generate_service_pb2.SubmitResponse:
        job = await self._core.submit(tenant_of(context), request.spec)
        return generate_service_pb2.SubmitResponse(job=job)

    async def Generate(  # type: ignore[override]
        self, request: generate_service_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generate_service_pb2.GenerateResponse]:
        first = True
        # The call's own deadline bounds the job too: nobody waits for it after that.
        remaining = context.time_remaining()
        updates = self._core.generate(tenant_of(context), request.spec, remaining)
        async for update in updates:
            if isinstance(update, job_pb2.JobEvent):
                yield generate_service_pb2.GenerateResponse(event=update)
            elif first:
                yield generate_service_pb2.GenerateResponse(job=update)
            first = False

    async def SubmitBatch(
        self, request: generate_service_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext
    ) -> generate_service_pb2.SubmitBatchResponse:
        batch_id, jobs = await self._batches.submit(tenant_of(context), request.specs)
        return generate_service_pb2.SubmitBatchResponse(batch_id=batch_id, jobs=jobs)


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, core: RouterCore, feeds: FeedHub, batches: Batches) -> None:
        self._core = core
        self._feeds = feeds
        self._batches = batches

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> job_service_pb2.GetJobResponse:
        return job_service_pb2.GetJobResponse(
            job=await self._core.get(tenant_of(context), request.job_id)
        )

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> job_service_pb2.ListJobsResponse:
        jobs, token = await self._core.list_jobs(tenant_of(context), request)
        return job_service_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> job_service_pb2.CancelJobResponse:
        limits.check_reason(request.reason)
        job = await self._core.cancel(tenant_of(context), request.job_id, request.reason)
        return job_service_pb2.CancelJobResponse(job=job)

    async def WatchJob(  # type: ignore[override]
        self, request: job_service_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        updates = self._core.watch(tenant_of(context), request.job_id, request.after_sequence)
        async for update in updates:
            if isinstance(update, job_pb2.Job):
                yield job_service_pb2.WatchJobResponse(job=update)
            else:
                yield job_service_pb2.WatchJobResponse(event=update)

    async def WatchJobs(  # type: ignore[override]
        self, request: job_service_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_service_pb2.WatchJobsResponse]:
        async for update in self._feeds.watch(tenant_of(context), request.cursor):
            if isinstance(update, str):
                yield job_service_pb2.WatchJobsResponse(cursor=update)
            else:
                yield job_service_pb2.WatchJobsResponse(event=update)

    async def WatchBatch(  # type: ignore[override]
        self, request: job_service_pb2.WatchBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_service_pb2.WatchBatchResponse]:
        async for update in self._batches.watch(tenant_of(context), request.batch_id):
            if isinstance(update, job_service_pb2.BatchSummary):
                yield job_service_pb2.WatchBatchResponse(summary=update)
            elif isinstance(update, job_pb2.Job):
                yield job_service_pb2.WatchBatchResponse(job=update)
            else:
                yield job_service_pb2.WatchBatchResponse(event=update)


class ProviderServicer(provider_service_pb2_grpc.ProviderServiceServicer):
    def __init__(self, core: RouterCore) -> None:
        self._core = core

    async def ListProviders(
        self, request: provider_service_pb2.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> provider_service_pb2.ListProvidersResponse:
        return provider_service_pb2.ListProvidersResponse(
            providers=await self._core.providers(request.task)
        )
