"""PromptService over gRPC: translates messages and calls the core."""

from __future__ import annotations

import grpc

from genmesh.v1 import job_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.grpc_server import Registration
from services.common.tasks import VISUAL_TASKS
from services.prompt import core
from services.prompt.enhance import enhance
from services.prompt.optimize import DEFAULT_BELOW, Optimizer

SERVICE_NAME: str = prompt_service_pb2.DESCRIPTOR.services_by_name["PromptService"].full_name
# Compressing below this leaves too little of any prompt to be worth sending.
MIN_BELOW_LENGTH = 100


class PromptServicer(prompt_service_pb2_grpc.PromptServiceServicer):
    """Validation, analysis, optimization and enhancement with one configured length limit."""

    def __init__(self, max_length: int, optimizer: Optimizer) -> None:
        self._max_length = max_length
        self._optimizer = optimizer

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

    async def OptimizePrompt(
        self,
        request: prompt_service_pb2.OptimizePromptRequest,
        context: grpc.aio.ServicerContext,
    ) -> prompt_service_pb2.OptimizePromptResponse:
        if not request.prompt.strip():
            raise InvalidArgument("prompt is empty")
        self._check_length(request.prompt)
        below = request.below_length or DEFAULT_BELOW
        if below < MIN_BELOW_LENGTH:
            raise InvalidArgument(f"below_length must be at least {MIN_BELOW_LENGTH}")
        record = await self._optimizer.optimize(request.prompt, below, request.task)
        return prompt_service_pb2.OptimizePromptResponse(optimization=record)

    async def EnhancePrompt(
        self,
        request: prompt_service_pb2.EnhancePromptRequest,
        context: grpc.aio.ServicerContext,
    ) -> prompt_service_pb2.EnhancePromptResponse:
        if request.task not in VISUAL_TASKS:
            raise InvalidArgument(
                "task must be TASK_TEXT_TO_IMAGE, TASK_IMAGE_TO_IMAGE or TASK_IMAGE_TO_VIDEO"
            )
        # The answer carries the prompt twice: a long one made a reply past a client's 4 MiB
        # receive limit, after seconds of work, where no prompt that long can be used anyway.
        self._check_length(request.prompt)
        record = enhance(
            request.prompt, request.task, request.width, request.height, self._max_length
        )
        return prompt_service_pb2.EnhancePromptResponse(enhancement=record)

    def _check_length(self, prompt: str) -> None:
        if len(prompt) > self._max_length:
            raise InvalidArgument(
                f"prompt is {len(prompt):,} characters; the limit is {self._max_length:,}"
            )


def registration(max_length: int, optimizer: Optimizer) -> Registration:
    """What grpc_server() needs to serve a PromptServicer."""
    return (
        prompt_service_pb2_grpc.add_PromptServiceServicer_to_server,
        PromptServicer(max_length, optimizer),
        SERVICE_NAME,
    )
