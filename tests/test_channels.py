"""Channels to mesh services: one address, or several replicas that share the calls."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import grpc_target, mesh_channel
from services.common.grpc_server import grpc_server

# Each server says a different status for this service, so a reply tells who answered.
WHO = "genmesh.test.Who"


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("router:50051", "router:50051"),
        ("dns:///router:50051", "dns:///router:50051"),
        ("127.0.0.1:50051, 127.0.0.1:50061", "ipv4:127.0.0.1:50051,127.0.0.1:50061"),
        ("[::1]:50051,[::1]:50061", "ipv6:[::1]:50051,[::1]:50061"),
    ],
)
def test_an_address_setting_becomes_a_grpc_target(address: str, target: str) -> None:
    assert grpc_target(address) == target


@pytest.mark.parametrize(
    "address",
    [
        "router-a:50051,router-b:50051",  # names: gRPC's static lists take IPs only
        "127.0.0.1:50051,[::1]:50051",  # two families
        "127.0.0.1:50051,",
        "127.0.0.1:50051,127.0.0.1",
        "127.0.0.1:50051,127.0.0.1:70000",
        "::1:50051,::1:50061",  # unbracketed IPv6 cannot be told from its port
    ],
)
def test_a_list_gRPC_cannot_take_is_refused_with_what_to_write(address: str) -> None:
    with pytest.raises(ValueError, match="dns:///router:50051"):
        grpc_target(address)


async def test_calls_are_spread_over_every_listed_replica_and_skip_one_that_is_down() -> None:
    async with grpc_server("127.0.0.1:0", []) as first, grpc_server("127.0.0.1:0", []) as second:
        await first.health.set(WHO, health_pb2.HealthCheckResponse.SERVING)
        await second.health.set(WHO, health_pb2.HealthCheckResponse.NOT_SERVING)
        async with mesh_channel(f"127.0.0.1:{first.port},127.0.0.1:{second.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def who() -> int:
                request = health_pb2.HealthCheckRequest(service=WHO)
                reply = await health.Check(request, timeout=5, wait_for_ready=True)
                return int(reply.status)

            answers = [await who() for _ in range(20)]
            assert answers.count(health_pb2.HealthCheckResponse.SERVING) >= 5
            assert answers.count(health_pb2.HealthCheckResponse.NOT_SERVING) >= 5

            await second.server.stop(0)
            # Calls on the way when it went may fail; after that, the one left takes them all.
            for _ in range(10):
                try:
                    await who()
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
            assert {await who() for _ in range(20)} == {health_pb2.HealthCheckResponse.SERVING}


async def test_a_name_that_also_resolves_where_nothing_listens_still_reaches_the_service() -> None:
    # "localhost" may resolve to ::1 as well as 127.0.0.1; with calls spread over every
    # address, the one nobody listens on must be skipped, not fail every other call.
    async with (
        grpc_server("127.0.0.1:0", []) as server,
        mesh_channel(f"localhost:{server.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(10):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
