"""The router's side of PromptService: the prompt a job's provider receives.

Short prompts cost no call at all; a prompt of DEFAULT_BELOW characters or more is
compressed by OptimizePrompt, and JobSpec.enhance_prompt asks EnhancePrompt for hints.
When PromptService cannot be reached, the same deterministic rules run in-process, so a
prompt-service outage slows no submit and fails none; the record says what happened.

The stored and dispatched Job's spec.prompt is the final prompt, so every dispatch (first,
redelivery, fallback) sends the same text; the caller's own text stays in
Job.prompt_optimization.original_prompt (or prompt_enhancement.original_prompt).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from genmesh.v1 import job_pb2, prompt_service_pb2, prompt_service_pb2_grpc, provider_service_pb2
from services.common.errors import InvalidArgument
from services.common.parameters import struct_to_dict
from services.common.tasks import VISUAL_TASKS, task_name
from services.prompt.enhance import enhance
from services.prompt.optimize import DEFAULT_BELOW, Optimizer

log = logging.getLogger(__name__)

# A language model may take a while on a long prompt; PromptService bounds it itself
# (GENMESH_PROMPT_OPTIMIZER_TIMEOUT), this only catches a service that hangs.
OPTIMIZE_TIMEOUT = 60.0
ENHANCE_TIMEOUT = 10.0
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x\u00d7]\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class PreparedPrompt:
    """The prompt to send, and how it came to differ from the caller's."""

    prompt: str
    optimization: job_pb2.PromptOptimization | None = None
    enhancement: job_pb2.PromptEnhancement | None = None

    def apply(self, job: job_pb2.Job) -> None:
        """Write the final prompt into the job's spec and record each step on the job."""
        job.spec.prompt = self.prompt
        if self.optimization is not None:
            job.prompt_optimization.CopyFrom(self.optimization)
        if self.enhancement is not None:
            job.prompt_enhancement.CopyFrom(self.enhancement)


class PromptPreparer:
    """Optimizes and enhances job prompts through PromptService, in-process when it is down."""

    def __init__(
        self,
        stub: prompt_service_pb2_grpc.PromptServiceStub,
        max_length: int,
        optimize_at: int = DEFAULT_BELOW,
    ) -> None:
        self._stub = stub
        self._max_length = max_length
        self._optimize_at = optimize_at

    async def prepare(self, spec: job_pb2.JobSpec) -> PreparedPrompt:
        """The prompt the provider should see for `spec` (already validated)."""
        if spec.enhance_prompt and spec.task not in VISUAL_TASKS:
            raise InvalidArgument(
                f"enhance_prompt applies to image and video tasks, not {task_name(spec.task)}"
            )
        prompt = spec.prompt
        optimization = None
        if len(prompt) >= self._optimize_at:
            optimization = await self._optimize(prompt, spec.task)
            prompt = optimization.optimized_prompt
        enhancement = None
        if spec.enhance_prompt:
            width, height = aspect(struct_to_dict(spec.parameters))
            enhancement = await self._enhance(prompt, spec.task, width, height)
            prompt = enhancement.enhanced_prompt
        return PreparedPrompt(prompt, optimization, enhancement)

    async def _optimize(
        self, prompt: str, task: job_pb2.Task.ValueType
    ) -> job_pb2.PromptOptimization:
        request = prompt_service_pb2.OptimizePromptRequest(
            prompt=prompt, below_length=self._optimize_at, task=task
        )
        start = time.perf_counter()
        try:
            reply = await self._stub.OptimizePrompt(request, timeout=OPTIMIZE_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            _reraise_invalid(exc)
            log.warning("PromptService.OptimizePrompt failed (%s); compressing here", exc.code())
            record = await Optimizer().optimize(prompt, self._optimize_at, task)
            record.fallback_reason = f"prompt service unavailable ({exc.code().name})"
            # The time lost waiting for the service counts too.
            record.duration_ms = round((time.perf_counter() - start) * 1000)
            return record
        return reply.optimization

    async def _enhance(
        self, prompt: str, task: job_pb2.Task.ValueType, width: int, height: int
    ) -> job_pb2.PromptEnhancement:
        request = prompt_service_pb2.EnhancePromptRequest(
            prompt=prompt, task=task, width=width, height=height
        )
        try:
            reply = await self._stub.EnhancePrompt(request, timeout=ENHANCE_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            _reraise_invalid(exc)
            log.warning("PromptService.EnhancePrompt failed (%s); enhancing here", exc.code())
            return enhance(prompt, task, width, height, self._max_length)
        return reply.enhancement


def check_provider_limit(provider: provider_service_pb2.Provider, prompt: str) -> None:
    """INVALID_ARGUMENT when `prompt` is longer than `provider` declares it accepts."""
    limit = provider.max_prompt_length
    if limit and len(prompt) > limit:
        raise InvalidArgument(
            f"prompt is {len(prompt):,} characters; provider {provider.name!r} accepts at most "
            f"{limit:,}"
        )


def aspect(parameters: Mapping[str, Any]) -> tuple[int, int]:
    """Width and height (or an aspect ratio's two sides) from job parameters; 0, 0 if none.

    Providers spell it differently: width/height, aspect_ratio "16:9", size "1024x768"."""
    width, height = parameters.get("width"), parameters.get("height")
    if isinstance(width, int | float) and isinstance(height, int | float):
        return int(width), int(height)
    for key in ("aspect_ratio", "size"):
        value = parameters.get(key)
        if isinstance(value, str) and (match := _RATIO.match(value)):
            # Scaled so "2.39:1" keeps its shape as integers.
            return round(float(match[1]) * 100), round(float(match[2]) * 100)
    return 0, 0


def _reraise_invalid(exc: grpc.aio.AioRpcError) -> None:
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        raise InvalidArgument(exc.details() or "invalid prompt") from exc
