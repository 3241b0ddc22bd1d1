"""`genmesh providers`: the provider catalog with each provider's health."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from rich.text import Text

from genmesh.v1 import job_pb2, provider_service_pb2, provider_service_pb2_grpc
from genmesh_cli.client import (
    Addresses,
    CliError,
    add_address_args,
    channel,
    format_rpc_error,
    provider_status_name,
    to_json,
)
from genmesh_cli.display import console
from genmesh_cli.generate import task_arg
from genmesh_cli.tables import print_rows
from services.common.tasks import task_name

CIRCUIT = {
    provider_service_pb2.CIRCUIT_STATE_CLOSED: Text("closed"),
    provider_service_pb2.CIRCUIT_STATE_OPEN: Text("open", "red"),
    provider_service_pb2.CIRCUIT_STATE_HALF_OPEN: Text("half-open", "yellow"),
}

STATUS_STYLE = {
    provider_service_pb2.PROVIDER_STATUS_AVAILABLE: "green",
    provider_service_pb2.PROVIDER_STATUS_DEGRADED: "yellow",
    provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE: "red",
}


def add_parser(subparsers: Any, addresses: Addresses) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "providers", help="list providers and their health", description="List providers."
    )
    p.add_argument("--task", "-t", type=task_arg, default=job_pb2.TASK_UNSPECIFIED)
    add_address_args(p, addresses)
    p.add_argument("--json", action="store_true", help="print providers as JSON lines")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    async with channel(args.router) as ch:
        stub = provider_service_pb2_grpc.ProviderServiceStub(ch)
        try:
            response = await stub.ListProviders(
                provider_service_pb2.ListProvidersRequest(task=args.task)
            )
        except grpc.aio.AioRpcError as error:
            raise CliError(format_rpc_error(error, args.router)) from None
    if args.json:
        for provider in response.providers:
            print(to_json(provider), flush=True)
        return 0
    out = console()
    if not response.providers:
        out.print("no providers")
        return 0
    columns = ("provider", "family", "status", "circuit", "workers", "running", "cost/job", "tasks")
    rows: list[list[str | Text]] = []
    for provider in response.providers:
        health = provider.health
        status = Text(provider_status_name(health.status), STATUS_STYLE.get(health.status, ""))
        if health.reason:
            status.append(f" ({health.reason})", "dim")
        rows.append(
            [
                provider.name + (" (offline)" if provider.offline else ""),
                provider.family,
                status,
                CIRCUIT.get(health.circuit, Text("-", "dim")),
                str(health.live_workers),
                str(health.in_flight),
                f"${provider.cost_per_job_usd:.4f}",
                ", ".join(task_name(t) for t in provider.tasks),
            ]
        )
    print_rows(out, columns, rows, wrap=frozenset({"status", "tasks"}))
    return 0
