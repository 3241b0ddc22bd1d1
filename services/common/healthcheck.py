"""`python -m services.common.healthcheck ADDRESS [SERVICE]`: exit 0 iff grpc.health.v1 is SERVING.

Container healthchecks run it; a failure prints one line, which `docker inspect` shows.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT = 3.0


async def check(address: str, service: str = "", within: float = TIMEOUT) -> str | None:
    """None when `service` at `address` reports SERVING within `within` s, else why not."""
    # A healthcheck dials its own container; an inherited HTTP(S)_PROXY must not reroute it.
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=within
            )
        except grpc.aio.AioRpcError as exc:
            return f"{address}: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2):
        print("usage: python -m services.common.healthcheck ADDRESS [SERVICE]", file=sys.stderr)
        return 2
    address, service = args[0], args[1] if len(args) == 2 else ""
    problem = asyncio.run(check(address, service))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
