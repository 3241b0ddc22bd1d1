"""Preview-first drafts: a quick, cheap run of an image or video job shown before the real one.

A draft's parameters come from the instance's catalog `draft` table, else from one generic
rule: declared sizes and lengths cut to a quarter, never below their declared minimum. A
`model` key in the table that is no declared parameter runs the draft on that model instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from genmesh.v1 import asset_pb2, job_pb2, provider_service_pb2
from services.common.errors import InvalidArgument
from services.common.parameters import applicable, validate_parameters
from services.common.tasks import DRAFT_TASKS, task_name
from services.providers.adapter import Adapter, JobContext, Output, Result
from services.providers.config import CatalogError, ProviderConfig
from services.providers.context import RunContext
from services.providers.registry import factory

# How much smaller a generic draft is, per side and in length.
SHRINK = 4
_SIDES = ("width", "height")
_LENGTHS = ("duration", "duration_seconds", "seconds", "length", "num_frames", "frames")
_NUMBERS = (provider_service_pb2.PARAMETER_TYPE_INTEGER, provider_service_pb2.PARAMETER_TYPE_NUMBER)


def draft_parameters(
    description: provider_service_pb2.Provider,
    task: job_pb2.Task.ValueType,
    parameters: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The job's parameters made cheap for a draft; None when nothing would get cheaper."""
    specs = applicable(description, task)
    draft = dict(parameters)
    if overrides:
        draft.update({k: v for k, v in overrides.items() if k in specs})
    else:
        for name in (*_SIDES, *_LENGTHS):
            spec, value = specs.get(name), parameters.get(name)
            if spec is not None and spec.type in _NUMBERS and _number(value):
                draft[name] = _shrunk(spec, value, side=name in _SIDES)
    return draft if draft != dict(parameters) else None


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _shrunk(spec: provider_service_pb2.ParameterSpec, value: float, *, side: bool) -> float:
    low = spec.minimum if spec.HasField("minimum") else 0
    if spec.type != provider_service_pb2.PARAMETER_TYPE_INTEGER:
        return max(value / SHRINK, low)
    smaller = int(value) // SHRINK
    if side and int(value) % 8 == 0:
        smaller -= smaller % 8  # models that need sides in multiples of 8 still get them
    return max(smaller, math.ceil(low))


class DraftContext:
    """The job's context for its draft run: draft parameters; the adapter's own previews
    and request ids are kept out of the job (the real run records its own)."""

    def __init__(self, ctx: JobContext, parameters: Mapping[str, Any]) -> None:
        self._ctx = ctx
        self._parameters = parameters

    @property
    def job(self) -> job_pb2.Job:
        return self._ctx.job

    @property
    def parameters(self) -> Mapping[str, Any]:
        return self._parameters

    async def previous_request_id(self) -> str:
        return ""

    async def read_input(self, index: int = 0) -> tuple[asset_pb2.Asset, bytes]:
        return await self._ctx.read_input(index)

    async def progress(self, percent: float | None = None, message: str = "") -> None:
        """Draft progress is not the job's progress; only the draft's outcome is reported."""

    async def preview(self, output: Output) -> asset_pb2.Asset:
        return asset_pb2.Asset()

    async def record_request_id(self, request_id: str) -> None:
        """Not recorded: a redelivered job must resume the real request, never the draft."""


@dataclasses.dataclass(frozen=True)
class Drafts:
    """How one instance makes drafts: catalog overrides, the adapter that runs them (None:
    the instance's own), and that adapter's description (None: asked for per draft)."""

    overrides: Mapping[str, Any]
    adapter: Adapter | None = None
    description: provider_service_pb2.Provider | None = None

    @classmethod
    def for_instance(cls, adapter: Adapter, config: ProviderConfig | None) -> Drafts:
        """From the instance's catalog `draft` table; CatalogError when it declares nonsense."""
        table = dict(config.draft) if config is not None else {}
        description = adapter.describe()
        declared = {p.name for p in description.parameters}
        model = table.pop("model", None) if "model" not in declared else None
        unknown = set(table) - declared
        if unknown:
            raise CatalogError(
                f"provider {adapter.name!r}: draft sets undeclared parameters {sorted(unknown)}; "
                f"declared: {', '.join(sorted(declared))}"
            )
        for task in DRAFT_TASKS & set(description.tasks):
            values = {k: v for k, v in table.items() if k in applicable(description, task)}
            try:
                validate_parameters(description, task, values)
            except InvalidArgument as exc:
                raise CatalogError(f"provider {adapter.name!r}: draft: {exc.message}") from None
        if model is None or config is None:
            return cls(table, description=description)
        models = {**config.models, **{task_name(t): str(model) for t in sorted(DRAFT_TASKS)}}
        drafter = factory(config.family)(dataclasses.replace(config, models=models))
        return cls(table, drafter, drafter.describe())

    async def run(self, main: Adapter, ctx: JobContext) -> Output | None:
        """Run the job as a draft: its first output, or None when no draft applies."""
        task = ctx.job.spec.task
        adapter = self.adapter or main
        description = self.description if self.description is not None else adapter.describe()
        parameters = draft_parameters(description, task, ctx.parameters, self.overrides)
        if parameters is None and self.adapter is None:
            return None
        result: Result = await adapter.run(DraftContext(ctx, parameters or ctx.parameters))
        return result.outputs[0] if result.outputs else None

    @staticmethod
    def wanted(job: job_pb2.Job, delivery: int) -> bool:
        """A draft is made on a job's first delivery, unless an earlier attempt showed one."""
        return job.spec.draft_first and delivery == 1 and not job.HasField("preview")

    async def show(self, main: Adapter, ctx: RunContext) -> None:
        """Run the draft and show it as the job's preview; a draft that fails or does not
        apply is only noted, and the full job goes ahead either way."""
        if ctx.job.spec.task not in DRAFT_TASKS:
            await ctx.progress(message="no draft: drafts are made for image and video tasks")
            return
        try:
            output = await self.run(main, ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = getattr(exc, "message", "") or type(exc).__name__
            await ctx.progress(message=f"draft failed ({reason}); making the full result")
            return
        if output is None:
            await ctx.progress(message="no draft: nothing about this job can be made cheaper")
            return
        await ctx.preview(output, message="draft preview; the full-quality result follows")

    async def aclose(self) -> None:
        if self.adapter is not None:
            await self.adapter.aclose()
