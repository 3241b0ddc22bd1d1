"""Models generated from the contract's messages, so the OpenAPI document shows exactly the
JSON the bridge sends and takes (proto3 JSON: field names as in the .proto, enums by name,
64-bit integers as decimal strings, bytes as base64, timestamps in RFC 3339)."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from genmesh.v1 import (
    asset_pb2,
    asset_service_pb2,
    generate_service_pb2,
    job_pb2,
    job_service_pb2,
    provider_service_pb2,
)

Duration = Annotated[
    str,
    Field(pattern=r"^-?[0-9]+(\.[0-9]{1,9})?s$", description='seconds with an "s" suffix: "1.5s"'),
]
Int64 = Annotated[str, Field(pattern=r"^-?[0-9]+$", description="64-bit integer as a string")]

# Either alphabet, padding optional, as proto3 JSON allows. Checked here because json_format
# skips any other character without a word, storing bytes the client never meant.
_BASE64 = r"[A-Za-z0-9+/_-]*={0,2}"


def _base64(value: str) -> str:
    if not re.fullmatch(_BASE64, value) or len(value.rstrip("=")) % 4 == 1:
        raise ValueError("not base64 (standard or URL-safe alphabet, padding optional)")
    return value


Base64 = Annotated[
    str,
    AfterValidator(_base64),
    Field(json_schema_extra={"pattern": f"^{_BASE64}$"}, description="base64"),
]

_SCALARS: dict[int, Any] = {
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_BYTES: Base64,
    FieldDescriptor.TYPE_BOOL: bool,
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_INT32: int,
    FieldDescriptor.TYPE_SINT32: int,
    FieldDescriptor.TYPE_SFIXED32: int,
    FieldDescriptor.TYPE_UINT32: int,
    FieldDescriptor.TYPE_FIXED32: int,
    FieldDescriptor.TYPE_INT64: Int64,
    FieldDescriptor.TYPE_SINT64: Int64,
    FieldDescriptor.TYPE_SFIXED64: Int64,
    FieldDescriptor.TYPE_UINT64: Int64,
    FieldDescriptor.TYPE_FIXED64: Int64,
}

_WELL_KNOWN: dict[str, Any] = {
    "google.protobuf.Timestamp": Annotated[str, Field(description="RFC 3339 time")],
    "google.protobuf.Duration": Duration,
    "google.protobuf.Struct": dict[str, Any],
    "google.protobuf.Value": Any,
}


@functools.cache
def model_of(descriptor: Descriptor, *, request: bool = False) -> type[BaseModel]:
    """A pydantic model for one message, as json_format prints it with every field present
    except unset message fields and unset `optional` scalars; as a request, any may be left out."""
    fields: dict[str, Any] = {}
    for field in descriptor.fields:
        kind = _type_of(field, request)
        if _is_map(field):
            fields[field.name] = (kind, Field(default_factory=dict))
        elif field.is_repeated:
            fields[field.name] = (list[kind], Field(default_factory=list))  # type: ignore[valid-type]
        elif field.has_presence or request:
            fields[field.name] = (kind | None, None)
        else:
            fields[field.name] = (kind, ...)
    config = ConfigDict(extra="forbid")
    model: type[BaseModel] = create_model(descriptor.name, __config__=config, **fields)
    return model


def _type_of(field: FieldDescriptor, request: bool) -> Any:
    if _is_map(field):
        assert field.message_type is not None
        entry = field.message_type.fields_by_name
        return dict[_type_of(entry["key"], request), _type_of(entry["value"], request)]  # type: ignore[misc]
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        names = tuple(v.name for v in field.enum_type.values)
        if request:
            return Literal[names]  # type: ignore[valid-type]
        # A value this contract does not name (from a newer router) prints as its number in
        # proto3 JSON; the reply passes it on rather than failing whole as a 500.
        return Literal[names] | int  # type: ignore[valid-type]
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        known = _WELL_KNOWN.get(field.message_type.full_name)
        return known or model_of(field.message_type, request=request)
    return _SCALARS[field.type]


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type is not None
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )


Job = model_of(job_pb2.Job.DESCRIPTOR)
JobEvent = model_of(job_pb2.JobEvent.DESCRIPTOR)
Asset = model_of(asset_pb2.Asset.DESCRIPTOR)
SubmitBatchResponse = model_of(generate_service_pb2.SubmitBatchResponse.DESCRIPTOR)
ListJobsResponse = model_of(job_service_pb2.ListJobsResponse.DESCRIPTOR)
ListProvidersResponse = model_of(provider_service_pb2.ListProvidersResponse.DESCRIPTOR)
BatchPutAssetsResponse = model_of(asset_service_pb2.BatchPutAssetsResponse.DESCRIPTOR)

PutAssetRequest = model_of(asset_service_pb2.PutAssetRequest.DESCRIPTOR, request=True)
BatchPutAssetsRequest = model_of(asset_service_pb2.BatchPutAssetsRequest.DESCRIPTOR, request=True)


class ErrorDetail(BaseModel):
    code: str = Field(description="The gRPC status name, e.g. NOT_FOUND", examples=["NOT_FOUND"])
    message: str = Field(description="For a person; never a stack trace")


class ErrorBody(BaseModel):
    """Every error the bridge returns."""

    error: ErrorDetail
