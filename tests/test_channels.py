"""Channels to mesh services: one address, or several replicas that share the calls."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import grpc_target, mesh_channel
from services.common.grpc_server import grpc_server
from tests.infra import reserved_port

# Each server says a different status for this service, so a reply tells who answered.
WHO = "genmesh.test.Who"


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("router:50051", "router:50051"),
        ("dns:///router:50051", "dns:///router:50051"),
        ("dns://10.0.0.2/router:50051", "dns://10.0.0.2/router:50051"),
        ("[::1]:50051", "[::1]:50051"),
        ("127.0.0.1:50051, 127.0.0.1:50061", "ipv4:127.0.0.1:50051,127.0.0.1:50061"),
        ("[::1]:50051,[::1]:50061", "ipv6:[::1]:50051,[::1]:50061"),
        # gRPC's own URIs, lists included, pass through as they are.
        ("ipv4:127.0.0.1:50051,127.0.0.1:50061", "ipv4:127.0.0.1:50051,127.0.0.1:50061"),
        ("unix:/run/genmesh/router.sock", "unix:/run/genmesh/router.sock"),
        # Other resolvers' URIs are gRPC's to read.
        ("passthrough:///router:50051", "passthrough:///router:50051"),
        ("xds:///router", "xds:///router"),
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
        "ipv6:127.0.0.1:50051,127.0.0.1:50061",  # not the family the scheme names
        "ipv4:127.0.0.1:50051,127.0.0.1:http",  # a port, but not a number
    ],
)
def test_a_list_gRPC_cannot_take_is_refused_with_what_to_write(address: str) -> None:
    with pytest.raises(ValueError, match="dns:///NAME:PORT") as refused:
        grpc_target(address)
    # Said without the value: the setting's name goes with it where it is read.
    assert repr(address) not in str(refused.value)


@pytest.mark.parametrize(
    ("address", "said"),
    [
        # Without a port gRPC calls 443, where no mesh service listens.
        ("127.0.0.1", "needs a port"),
        ("storage", "needs a port"),
        ("storage:", "needs a port"),
        ("[::1]", "needs a port"),
        ("dns:///storage", "needs a port"),
        ("dns://10.0.0.2/storage", "needs a port"),
        ("::1", "IPv6 address goes in brackets"),
        ("ipv4:127.0.0.1", "needs a port"),
        ("ipv4:127.0.0.1:50051,127.0.0.2", "needs a port"),
        ("ipv6:[::1]:50051,[::2]", "needs a port"),
        (":50052", "needs a host"),
        ("storage:http", "port must be 1 to 65535"),
        ("storage:70000", "port must be 1 to 65535"),
    ],
)
def test_an_address_without_a_port_is_refused_rather_than_sent_to_443(
    address: str, said: str
) -> None:
    with pytest.raises(ValueError, match=said):
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


async def test_a_replica_down_from_the_start_is_skipped_not_failing_every_other_call() -> None:
    with reserved_port() as down:  # refuses connections: nothing listens on it
        async with (
            grpc_server("127.0.0.1:0", []) as server,
            mesh_channel(f"127.0.0.1:{down},127.0.0.1:{server.port}") as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(20):
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
