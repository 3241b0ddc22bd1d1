"""Checks job parameters against what a provider declares; never coerces silently."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.errors import InvalidArgument

_TYPE_NAMES = {
    provider_service_pb2.PARAMETER_TYPE_STRING: "a string",
    provider_service_pb2.PARAMETER_TYPE_INTEGER: "an integer",
    provider_service_pb2.PARAMETER_TYPE_NUMBER: "a number",
    provider_service_pb2.PARAMETER_TYPE_BOOLEAN: "true or false",
}


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The struct as plain values; InvalidArgument for a number JSON cannot carry (NaN or
    infinity), which a Struct holds but nothing downstream can read."""
    # By hand rather than json_format.MessageToDict: this runs on every job, at half the cost.
    return {key: _plain(value) for key, value in struct.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(f"parameters must be JSON: {number} is not a JSON number")
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    return None  # null_value, or no kind set, which JSON reads as null too


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


def applicable(
    provider: provider_service_pb2.Provider, task: job_pb2.Task.ValueType
) -> dict[str, provider_service_pb2.ParameterSpec]:
    """The parameters `provider` accepts for `task`, by name."""
    return {p.name: p for p in provider.parameters if not p.tasks or task in p.tasks}


class ParameterRules:
    """One provider's parameters for one task, read once and checked against many jobs."""

    def __init__(self, provider: provider_service_pb2.Provider, task: job_pb2.Task.ValueType):
        self._provider = provider.name
        self._specs = applicable(provider, task)
        self._defaults = {
            name: json_format.MessageToDict(spec.default_value)
            for name, spec in self._specs.items()
            if spec.HasField("default_value")
        }

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Typed values with defaults filled in; InvalidArgument names the parameter and its
        limits."""
        unknown = sorted(set(values) - self._specs.keys())
        if unknown:
            known = ", ".join(sorted(self._specs)) or "none"
            raise InvalidArgument(
                f"unknown parameter {unknown[0]!r} for provider {self._provider!r}; "
                f"accepted: {known}"
            )
        out: dict[str, Any] = {}
        for name, spec in self._specs.items():
            if name in values:
                out[name] = _check(spec, values[name])
            elif name in self._defaults:
                out[name] = self._defaults[name]
        return out


def validate_parameters(
    provider: provider_service_pb2.Provider,
    task: job_pb2.Task.ValueType,
    values: Mapping[str, Any],
) -> dict[str, Any]:
    """Typed values with defaults filled in; InvalidArgument names the parameter and its limits."""
    return ParameterRules(provider, task).validate(values)


def _check(spec: provider_service_pb2.ParameterSpec, value: Any) -> Any:
    kind = spec.type
    if kind == provider_service_pb2.PARAMETER_TYPE_BOOLEAN:
        if not isinstance(value, bool):
            raise _bad(spec, value)
        return value
    if kind == provider_service_pb2.PARAMETER_TYPE_STRING:
        if not isinstance(value, str):
            raise _bad(spec, value)
        if spec.allowed_values and value not in spec.allowed_values:
            raise InvalidArgument(
                f"parameter {spec.name!r} is {value!r}; allowed: {', '.join(spec.allowed_values)}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(spec, value)
    if kind == provider_service_pb2.PARAMETER_TYPE_INTEGER:
        if float(value) != int(value):
            raise _bad(spec, value)
        value = int(value)
    else:
        value = float(value)
    if spec.HasField("minimum") and value < spec.minimum:
        raise InvalidArgument(f"parameter {spec.name!r} is {value}; {_range(spec)}")
    if spec.HasField("maximum") and value > spec.maximum:
        raise InvalidArgument(f"parameter {spec.name!r} is {value}; {_range(spec)}")
    if spec.allowed_values and str(value) not in spec.allowed_values:
        raise InvalidArgument(
            f"parameter {spec.name!r} is {value}; allowed: {', '.join(spec.allowed_values)}"
        )
    return value


def _range(spec: provider_service_pb2.ParameterSpec) -> str:
    low = _num(spec.minimum) if spec.HasField("minimum") else "-inf"
    high = _num(spec.maximum) if spec.HasField("maximum") else "inf"
    return f"allowed range is {low}..{high}"


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _bad(spec: provider_service_pb2.ParameterSpec, value: Any) -> InvalidArgument:
    # Said as JSON, as callers write parameters: null and true, not Python's None and True.
    got = json.dumps(value, ensure_ascii=False)
    return InvalidArgument(
        f"parameter {spec.name!r} must be {_TYPE_NAMES.get(spec.type, 'a value')}, got {got}"
    )
