"""PromptService over gRPC: translates messages and calls the core."""

from __future__ import annotations

import grpc

from genmesh.v1 import job_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.grpc_server import Registration
from services.prompt import core

SERVICE_NAME: str = prompt_service_pb2.DESCRIPTOR.services_by_name["PromptService"].full_name


class PromptServicer(prompt_service_pb2_grpc.PromptServiceServicer):
    """Validation and analysis with one configured length limit."""

    def __init__(self, max_length: int) -> None:
        self._max_length = max_length

    async def ValidatePrompt(
        self,
        request: prompt_service_pb2.ValidatePromptRequest,
        context: grpc.aio.ServicerContext,
    ) -> prompt_service_pb2.ValidatePromptResponse:
        # Proto3 enums are open: an unknown number arrives as-is and is as malformed as zero.
        if request.task == job_pb2.TASK_UNSPECIFIED or request.task not in job_pb2.Task.values():
            raise InvalidArgument("task is required")
        violations = core.validate(request.prompt, request.task, self._max_length)
        return prompt_service_pb2.ValidatePromptResponse(
            valid=not violations,
            violations=[
                prompt_service_pb2.PromptViolation(code=v.code, message=v.message)
                for v in violations
            ],
            length=len(request.prompt),
            max_length=self._max_length,
        )

    async def AnalyzePrompt(
        self,
        request: prompt_service_pb2.AnalyzePromptRequest,
        context: grpc.aio.ServicerContext,
    ) -> prompt_service_pb2.AnalyzePromptResponse:
        a = core.analyze(request.prompt)
        return prompt_service_pb2.AnalyzePromptResponse(
            length=a.length,
            words=a.words,
            sentences=a.sentences,
            readability=a.readability,
            complexity=a.complexity,
            keywords=a.keywords,
        )


def registration(max_length: int) -> Registration:
    """What grpc_server() needs to serve a PromptServicer."""
    return (
        prompt_service_pb2_grpc.add_PromptServiceServicer_to_server,
        PromptServicer(max_length),
        SERVICE_NAME,
    )
