"""Declared provider parameters: the contract entry a provider lists and how a raw value is read."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from genmesh.v1 import job_pb2, provider_service_pb2
from services.providers.adapter import InvalidInput

ParameterType = provider_service_pb2.ParameterType
Task = job_pb2.Task

INT = provider_service_pb2.PARAMETER_TYPE_INTEGER
NUM = provider_service_pb2.PARAMETER_TYPE_NUMBER
STR = provider_service_pb2.PARAMETER_TYPE_STRING
BOOL = provider_service_pb2.PARAMETER_TYPE_BOOLEAN


@dataclass(frozen=True)
class Param:
    """One declared parameter: its contract entry and how a raw value is checked."""

    name: str
    type: ParameterType.ValueType
    description: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] = ()
    tasks: tuple[Task.ValueType, ...] = ()

    def proto(self) -> provider_service_pb2.ParameterSpec:
        spec = provider_service_pb2.ParameterSpec(
            name=self.name,
            description=self.description,
            type=self.type,
            allowed_values=self.allowed,
            minimum=self.minimum,
            maximum=self.maximum,
            tasks=self.tasks,
        )
        if isinstance(self.default, bool):
            spec.default_value.bool_value = self.default
        elif isinstance(self.default, int | float):
            spec.default_value.number_value = self.default
        elif isinstance(self.default, str):
            spec.default_value.string_value = self.default
        return spec

    def read(self, value: Any) -> Any:
        """The value as the adapter uses it, or the default; InvalidInput if out of contract."""
        if value is None:
            return self.default
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if self.type == provider_service_pb2.PARAMETER_TYPE_INTEGER:
            # Struct carries every number as a double: 512.0 is a fine integer.
            if not number or not float(value).is_integer():
                raise self._invalid(value)
            value = int(value)
        elif self.type == provider_service_pb2.PARAMETER_TYPE_NUMBER:
            if not number or not math.isfinite(value):
                raise self._invalid(value)
            value = float(value)
        elif self.type == provider_service_pb2.PARAMETER_TYPE_BOOLEAN:
            if not isinstance(value, bool):
                raise self._invalid(value)
        elif not isinstance(value, str) or (self.allowed and value not in self.allowed):
            raise self._invalid(value)
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise self._invalid(value)
        return value

    def _invalid(self, value: Any) -> InvalidInput:
        kind = ParameterType.Name(self.type).removeprefix("PARAMETER_TYPE_").lower()
        limits = []
        if self.allowed:
            limits.append(f"one of {', '.join(self.allowed)}")
        if self.minimum is not None:
            limits.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            limits.append(f"<= {self.maximum:g}")
        article = "an" if kind[0] in "aeiou" else "a"
        rule = f"{article} {kind}" + (f" ({', '.join(limits)})" if limits else "")
        return InvalidInput("invalid_parameter", f"{self.name} must be {rule}, got {value!r}")


def read_parameters(
    params: Iterable[Param], task: Task.ValueType, raw: Mapping[str, Any]
) -> dict[str, Any]:
    """Every parameter that applies to `task`, checked, with defaults filled in."""
    return {p.name: p.read(raw.get(p.name)) for p in params if not p.tasks or task in p.tasks}


def require_multiple(params: Mapping[str, Any], step: int) -> None:
    """InvalidInput unless width and height, where set, are multiples of `step`."""
    for side in ("width", "height"):
        value = params[side]
        if value is not None and value % step:
            raise InvalidInput(
                "invalid_parameter", f"{side} must be a multiple of {step}, got {value}"
            )
