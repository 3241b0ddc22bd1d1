"""JSON <-> protobuf for the REST surface; JSON keeps the contract's field names."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, Field

from gateway.errors import BadRequest
from genmesh.v1 import job_pb2
from services.common.tasks import task_from_name

_STATE_PREFIX = "JOB_STATE_"


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class JobSpecBody(BaseModel):
    """POST /v1/jobs: a JobSpec with the task by name ("text-to-image" or "TASK_TEXT_TO_IMAGE")."""

    task: str
    prompt: str = ""
    provider: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    input_asset_ids: list[str] = Field(default_factory=list)
    idempotency_key: str = ""

    def to_proto(self) -> job_pb2.JobSpec:
        spec = job_pb2.JobSpec(
            task=parse_task(self.task),
            prompt=self.prompt,
            provider=self.provider,
            input_asset_ids=self.input_asset_ids,
            idempotency_key=self.idempotency_key,
        )
        spec.parameters.update(self.parameters)
        return spec


class CancelBody(BaseModel):
    reason: str = ""


def parse_task(name: str) -> job_pb2.Task.ValueType:
    try:
        return task_from_name(name)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def parse_state(name: str) -> job_pb2.JobState.ValueType:
    """ "completed", "COMPLETED" or "JOB_STATE_COMPLETED"."""
    key = name.strip().upper().replace("-", "_")
    if not key.startswith(_STATE_PREFIX):
        key = _STATE_PREFIX + key
    if key == "JOB_STATE_UNSPECIFIED" or key not in set(job_pb2.JobState.keys()):
        raise BadRequest(f"unknown job state {name!r}")
    return job_pb2.JobState.Value(key)


TERMINAL_STATES = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)
