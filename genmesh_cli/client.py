"""What every command shares: addresses, channels, one-line errors and enum names."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.channels import grpc_target, mesh_channel

DEFAULT_ROUTER = "127.0.0.1:50051"
DEFAULT_STORAGE = "127.0.0.1:50052"

# Generated outputs can be large; match the servers' limit.

TERMINAL_STATES = frozenset(
    {job_pb2.JOB_STATE_COMPLETED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)

# What to try when a call fails with a given code and the cause is usually local.
_HINTS = {
    grpc.StatusCode.UNAVAILABLE: "is `genmesh up` running?",
    grpc.StatusCode.UNIMPLEMENTED: "is that address a genmesh service?",
}


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class Addresses:
    router: str = DEFAULT_ROUTER
    storage: str = DEFAULT_STORAGE


def default_addresses(env: Mapping[str, str]) -> Addresses:
    """Addresses from GENMESH_ROUTER_ADDR / GENMESH_STORAGE_ADDR, else the `genmesh up` ports;
    CliError (a usage error) naming the variable whose list gRPC cannot take."""
    for name in ("GENMESH_ROUTER_ADDR", "GENMESH_STORAGE_ADDR"):
        try:
            if env.get(name):  # empty: the default
                grpc_target(env[name])
        except ValueError as error:
            raise CliError(f"{name}: {error}", exit_code=2) from None
    return Addresses(
        router=env.get("GENMESH_ROUTER_ADDR") or DEFAULT_ROUTER,
        storage=env.get("GENMESH_STORAGE_ADDR") or DEFAULT_STORAGE,
    )


# The CLI's commands open their channels through this name.
channel = mesh_channel


def address_arg(text: str) -> str:
    """A --router or --storage value: one address, or several replicas that gRPC can take."""
    try:
        grpc_target(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


# The longest google.protobuf.Duration (10,000 years); past it, or nan, the spec could not be
# built and the command ended in a traceback.
MAX_SECONDS = 315_576_000_000


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0 and at most {MAX_SECONDS:,}, got {text!r}"
        )
    return value


def add_address_args(
    parser: argparse.ArgumentParser, addresses: Addresses, *, storage: bool = False
) -> None:
    """--router (and with `storage`, --storage): where the command's calls go."""
    parser.add_argument(
        "--router", type=address_arg, default=addresses.router, help="router address [%(default)s]"
    )
    if storage:
        parser.add_argument(
            "--storage",
            type=address_arg,
            default=addresses.storage,
            help="storage address [%(default)s]",
        )


def format_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError, address: str = "") -> str:
    """One line: code, the server's details, where, and a hint when the cause is usually local."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    line = f"{name}: {details or 'no details'}"
    if address:
        line += f" ({address})"
    hint = _HINTS.get(code) if isinstance(code, grpc.StatusCode) else None
    if hint:
        line += f" - {hint}"
    return line


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as JSON when it parses (2, true, [1,2]), else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def params_struct(params: list[tuple[str, Any]]) -> struct_pb2.Struct:
    """A Struct from parsed parameters; a repeated key keeps its last value."""
    struct = struct_pb2.Struct()
    for key, value in params:
        struct.update({key: value})
    return struct


def provider_status_name(status: provider_service_pb2.ProviderStatus.ValueType) -> str:
    name = provider_service_pb2.ProviderStatus.Name(status)
    return name.removeprefix("PROVIDER_STATUS_").lower()


def to_json(message: Message) -> str:
    """A message as one compact line of canonical proto3 JSON (as grpcurl prints it)."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def human_size(size: int) -> str:
    units = ["B", "KiB", "MiB", "GiB"]
    value = float(size)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
