"""OptimizePrompt's core: a language model first when one is configured, the heuristic else."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from genmesh.v1 import job_pb2
from services.prompt import heuristic
from services.prompt.ollama import CompressorError
from services.prompt.terms import missing_terms

log = logging.getLogger(__name__)

HEURISTIC = "heuristic"
UNCHANGED = "unchanged"
# The default of OptimizePromptRequest.below_length.
DEFAULT_BELOW = 3000


class Compressor(Protocol):
    name: str

    async def compress(self, prompt: str, below: int, task: job_pb2.Task.ValueType) -> str: ...


class Optimizer:
    """Compresses prompts; never fails for want of a model, the record says what happened."""

    def __init__(self, compressor: Compressor | None = None) -> None:
        self._compressor = compressor

    async def optimize(
        self,
        prompt: str,
        below: int = DEFAULT_BELOW,
        task: job_pb2.Task.ValueType = job_pb2.TASK_UNSPECIFIED,
    ) -> job_pb2.PromptOptimization:
        """`prompt` shortened below `below` characters, with method, lengths and time taken."""
        start = time.perf_counter()
        if len(prompt) < below:
            return _record(UNCHANGED, prompt, prompt, start)
        if self._compressor is None:
            reason = "no optimizer model configured"
        else:
            try:
                name = self._compressor.name
                answer = await self._compressor.compress(prompt, below, task)
                optimized = _checked(answer, prompt, below, name)
                return _record(f"provider:{name}", prompt, optimized, start)
            except CompressorError as exc:
                reason = str(exc)
                log.info("prompt optimizer unusable, using the heuristic: %s", reason)
        return _record(HEURISTIC, prompt, heuristic.compress(prompt, below), start, reason)


def _checked(answer: str, prompt: str, below: int, name: str) -> str:
    """The model's answer with any style, quality or subject term it dropped re-appended."""
    if not answer.strip():
        raise CompressorError(f"{name} answered nothing")
    lost = missing_terms(answer, heuristic.key_terms(prompt))
    if lost:
        answer = answer.rstrip().rstrip(".") + ". " + ", ".join(lost) + "."
    if len(answer) >= below:
        raise CompressorError(
            f"{name} answered {len(answer):,} characters, not fewer than {below:,}"
        )
    return answer


def _record(
    method: str, original: str, optimized: str, start: float, reason: str = ""
) -> job_pb2.PromptOptimization:
    return job_pb2.PromptOptimization(
        method=method,
        original_length=len(original),
        optimized_length=len(optimized),
        duration_ms=round((time.perf_counter() - start) * 1000),
        original_prompt=original,
        optimized_prompt=optimized,
        fallback_reason=reason,
    )
