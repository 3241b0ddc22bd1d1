"""JSON <-> protobuf for the REST surface; JSON keeps the contract's field names."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import BadRequest, bad_input
from gateway.schema import Duration
from genmesh.v1 import job_pb2
from services.common.tasks import state_from_name, state_names, task_from_name, task_names
from services.router.limits import MAX_REASON

M = TypeVar("M", bound=Message)


def to_json(message: Message) -> dict[str, Any]:
    """Proto3 JSON with the .proto's field names and every plain field present, so clients
    never have to know a default (schema.py describes exactly this)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_message(body: BaseModel, message: M) -> M:
    """A request body validated by one of schema.py's request models, as its message; what
    json_format still refuses is a 400."""
    with bad_input(message.DESCRIPTOR.name):
        return json_format.ParseDict(body.model_dump(exclude_none=True), message)


def _enum(enum: Any) -> Any:
    return Literal[tuple(enum.keys())]


class JobSpecBody(BaseModel):
    """A JobSpec; the task by name ("text-to-image" or "TASK_TEXT_TO_IMAGE"), the rest as in
    proto3 JSON."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task": "text-to-image",
                    "prompt": "a red fox in snow",
                    "provider": "sandbox",
                    "parameters": {"width": 256, "height": 256, "latency_ms": 1000},
                }
            ]
        },
    )

    task: str = Field(
        default="", description="One of " + ", ".join(task_names()) + "; empty with a pipeline"
    )
    prompt: str = Field(default="", description="1..10,000 characters; optional for some tasks")
    provider: str = Field(default="", description="Empty lets the router choose")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="As GET /v1/providers declares them"
    )
    input_asset_ids: list[str] = Field(
        default_factory=list, description="From POST /v1/assets, for tasks that take an input"
    )
    idempotency_key: str = Field(
        default="", description="The same key and spec return the same job"
    )
    provider_preference: _enum(job_pb2.ProviderPreference) | None = None  # type: ignore[valid-type]
    routing_policy: _enum(job_pb2.RoutingPolicy) | None = None  # type: ignore[valid-type]
    priority: _enum(job_pb2.Priority) | None = None  # type: ignore[valid-type]
    enhance_prompt: bool = False
    draft_first: bool = False
    timeout: Duration | None = None
    attempt_timeout: Duration | None = None
    hedge_after: Duration | None = None
    pipeline: dict[str, Any] | None = Field(
        default=None, description='A PipelineSpec: {"name": "speech-to-image"} or {"steps": [...]}'
    )

    def to_proto(self) -> job_pb2.JobSpec:
        task = parse_task(self.task) if self.task or self.pipeline is None else 0
        _check_nesting("parameters", self.parameters)
        _check_nesting("pipeline", self.pipeline)
        rest = self.model_dump(exclude_none=True, exclude={"task", "parameters"})
        if self.pipeline is not None:
            rest["pipeline"] = _step_tasks(self.pipeline)
        with bad_input("job spec"):
            spec = json_format.ParseDict(rest, job_pb2.JobSpec())
            spec.task = task  # type: ignore[assignment]
            spec.parameters.update(self.parameters)
        return spec


def _step_tasks(pipeline: dict[str, Any]) -> dict[str, Any]:
    """The pipeline with each step's task read by name as the job's own is ("text-to-text" as
    well as "TASK_TEXT_TO_TEXT"); BadRequest naming the step for an unknown one."""
    steps = pipeline.get("steps")
    if not isinstance(steps, list):
        return pipeline  # protobuf's parse says what is wrong with it
    named = []
    for index, step in enumerate(steps):
        if isinstance(step, dict) and isinstance(step.get("task"), str):
            try:
                step = {**step, "task": task_from_name(step["task"])}
            except ValueError as e:
                raise BadRequest(f"pipeline.steps[{index}].task: {e}") from None
        named.append(step)
    return {**pipeline, "steps": named}


# JSON levels a spec's parameters (or pipeline) may nest. Protobuf parses no message nested
# past 100 levels, and each JSON object in a Struct takes three of them (a list two): deeper
# JSON made a request that could not be built, which was an INTERNAL error.
MAX_NESTING = 20


def _check_nesting(name: str, value: Any) -> None:
    """BadRequest when `value` holds objects or lists nested past MAX_NESTING levels."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_NESTING):
        level = [
            item
            for node in level
            for item in (node.values() if isinstance(node, dict) else node)
            if isinstance(item, dict | list)
        ]
        if not level:
            return
    raise BadRequest(f"{name} is nested more than {MAX_NESTING} levels deep")


class SubmitBatchBody(BaseModel):
    """One job per spec, all or none."""

    # As every other body: a misspelt field is refused rather than silently dropped.
    model_config = ConfigDict(extra="forbid")
    specs: list[JobSpecBody] = Field(min_length=1, max_length=1000, description="1..1,000")

    def to_proto(self) -> list[job_pb2.JobSpec]:
        specs = []
        for index, spec in enumerate(self.specs):
            try:
                specs.append(spec.to_proto())
            except BadRequest as e:
                raise BadRequest(f"specs[{index}]: {e}") from None
        return specs


class CancelBody(BaseModel):
    # A misspelt "reason" refused before the job is cancelled, not dropped with it.
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        default="",
        max_length=MAX_REASON,
        description="Recorded in the job's error message; at most 1,000 characters",
    )


def parse_task(name: str) -> job_pb2.Task.ValueType:
    try:
        return task_from_name(name)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def parse_state(name: str) -> job_pb2.JobState.ValueType:
    """ "completed", "COMPLETED" or "JOB_STATE_COMPLETED"."""
    try:
        return state_from_name(name)
    except ValueError:
        raise BadRequest(f"unknown job state {name!r}; one of {', '.join(state_names())}") from None


TERMINAL_STATES = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
