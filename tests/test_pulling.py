"""PullConsumer against a real JetStream: messages handed over as they arrive, whatever
earlier pull requests are still open on the server."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from genmesh_cli.supervisor import nats_server_binary
from services.common import pulling
from services.common.bus import connect
from services.common.pulling import PullConsumer, worked_on
from tests.infra import eventually, private_nats_server, reachable

# Far below a pull request's lifetime, so a message held by a forgotten request shows.
PROMPTLY = 0.5


@pytest.fixture
async def nc(nats_url: str, nats_prefix: str) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(name=stream_name(nats_prefix), subjects=[f"{nats_prefix}.pull.>"])
        )
        yield nc
    finally:
        await nc.close()


def stream_name(prefix: str) -> str:
    return prefix.upper().replace("-", "_").replace(".", "_") + "_PULL"


async def consumer(nc: Client, prefix: str) -> PullConsumer:
    pull = PullConsumer(nc, nc.jetstream(), stream_name(prefix), "worker")
    await pull.start(
        f"{prefix}.pull.jobs", ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0)
    )
    return pull


async def fetch_one(pull: PullConsumer) -> bytes:
    """The next message's payload (acked), however many empty fetches that takes."""
    while True:
        msgs = await pull.fetch(256, wait=1.0)
        if msgs:
            assert len(msgs) == 1
            await msgs[0].ack()
            return msgs[0].data


async def publish_and_time(nc: Client, prefix: str, pull: PullConsumer, data: bytes) -> float:
    waiting = asyncio.create_task(fetch_one(pull))
    await asyncio.sleep(0.05)
    sent = time.monotonic()
    await nc.jetstream().publish(f"{prefix}.pull.jobs", data)
    assert await waiting == data
    return time.monotonic() - sent


async def test_after_quiet_spells_each_message_is_handed_over_at_once(
    nc: Client, nats_prefix: str
) -> None:
    # The pattern that stalled nats-py's fetch(): quiet longer than a fetch's wait (so
    # requests expire while fetches come and go), then messages one after another.
    pull = await consumer(nc, nats_prefix)
    try:
        delays = []
        for spell in range(3):
            await asyncio.sleep(1.3)
            for n in range(3):
                delays.append(await publish_and_time(nc, nats_prefix, pull, b"%d.%d" % (spell, n)))
        assert max(delays) < PROMPTLY, delays
    finally:
        await pull.close()


async def test_a_filled_request_is_followed_by_the_next_at_once(
    nc: Client, nats_prefix: str
) -> None:
    # One slot free at a time, as in a worker at its concurrency: every request is filled
    # by its one message, and the server says nothing more about a filled request.
    pull = await consumer(nc, nats_prefix)
    try:
        for n in range(4):
            waiting = asyncio.create_task(pull.fetch(1, wait=5.0))
            await asyncio.sleep(0.05)
            sent = time.monotonic()
            await nc.jetstream().publish(f"{nats_prefix}.pull.jobs", b"%d" % n)
            msgs = await waiting
            assert [m.data for m in msgs] == [b"%d" % n]
            assert time.monotonic() - sent < PROMPTLY
            await msgs[0].ack()
    finally:
        await pull.close()


async def test_an_interrupt_ends_the_fetch_under_way_or_else_the_next_one(
    nc: Client, nats_prefix: str
) -> None:
    # Fetches that would wait far longer than the guards below: only the interrupt ends them.
    pull = await consumer(nc, nats_prefix)
    try:
        waiting = asyncio.create_task(pull.fetch(1, wait=60.0))
        await asyncio.sleep(0.1)  # its request is out, and it waits
        pull.interrupt()
        assert await asyncio.wait_for(waiting, 10) == []
        pull.interrupt()  # between fetches: the next one ends at once
        assert await asyncio.wait_for(pull.fetch(1, wait=60.0), 10) == []
        # Once only: the fetch after that waits for its message as ever.
        await nc.jetstream().publish(f"{nats_prefix}.pull.jobs", b"a job")
        msgs = await asyncio.wait_for(pull.fetch(1, wait=60.0), 10)
        assert [m.data for m in msgs] == [b"a job"]
        await msgs[0].ack()
    finally:
        await pull.close()


async def test_a_message_held_by_an_earlier_request_still_arrives_and_its_late_end_is_ignored(
    nc: Client, nats_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pulling, "EXPIRES", 1.0)
    pull = await consumer(nc, nats_prefix)
    try:
        assert await pull.fetch(10, wait=0.1) == []  # request 1 is open on the server
        # A forged end of request 1: the consumer opens request 2 beside the real request 1,
        # which is what a late 408 did to nats-py's fetch().
        await nc.publish(f"{pull._inbox}.1", b"", headers={"Status": "408"})
        await nc.flush()
        assert await pull.fetch(10, wait=0.1) == []
        # The server gives this to the oldest open request, 1, which the consumer took
        # for ended: it must still be handed over at once.
        assert await publish_and_time(nc, nats_prefix, pull, b"to request 1") < PROMPTLY
        # Request 1's real end arrives now; request 2 must stay the open one.
        await asyncio.sleep(1.2)
        assert await publish_and_time(nc, nats_prefix, pull, b"to request 2") < PROMPTLY
    finally:
        await pull.close()


async def test_closing_hands_back_what_was_delivered_but_not_taken(
    nc: Client, nats_prefix: str
) -> None:
    first = await consumer(nc, nats_prefix)
    assert await first.fetch(5, wait=0.1) == []  # a request for five is open
    sent = {b"job %d" % n for n in range(5)}
    for data in sorted(sent):
        await nc.jetstream().publish(f"{nats_prefix}.pull.jobs", data)
    await asyncio.sleep(0.2)  # all five delivered to `first`
    taken = await first.fetch(1, wait=1.0)
    assert len(taken) == 1
    await first.close()  # the other four go back now, not after the 30 s ack_wait
    second = await consumer(nc, nats_prefix)
    try:
        got = {taken[0].data}
        deadline = time.monotonic() + 10
        while got != sent and time.monotonic() < deadline:
            for msg in await second.fetch(5, wait=1.0):
                got.add(msg.data)
                await msg.ack()
        assert got == sent
    finally:
        await second.close()


async def test_starting_with_another_ack_wait_changes_the_existing_consumers(
    nc: Client, nats_prefix: str
) -> None:
    stream = stream_name(nats_prefix)
    first = await consumer(nc, nats_prefix)
    await first.close()
    # A later start with a changed setting: workers heartbeat by their own ack_wait, so
    # the server must redeliver by the same one.
    later = PullConsumer(nc, nc.jetstream(), stream, "worker")
    await later.start(
        f"{nats_prefix}.pull.jobs", ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=2.0)
    )
    try:
        info = await nc.jetstream().consumer_info(stream, "worker")
        assert info.config.ack_wait == 2.0
        assert info.config.filter_subject == f"{nats_prefix}.pull.jobs"
        await nc.jetstream().publish(f"{nats_prefix}.pull.jobs", b"job")
        held = await later.fetch(1, wait=5.0)
        assert [m.data for m in held] == [b"job"]
        # Not acked: it comes again after the new 2 s, not the first start's 30 s.
        sent = time.monotonic()
        again: list[Msg] = []
        while not again and time.monotonic() - sent < 10:
            again = await later.fetch(1, wait=1.0)
        # (Its delivery count is no evidence: nats-server has been seen to give 1 again.)
        assert [m.data for m in again] == [b"job"]
        assert again[0].metadata.sequence.consumer > held[0].metadata.sequence.consumer
    finally:
        await later.close()


async def test_messages_worked_on_past_the_ack_wait_are_not_sent_again(
    nc: Client, nats_prefix: str
) -> None:
    pull = PullConsumer(nc, nc.jetstream(), stream_name(nats_prefix), "recorder")
    await pull.start(
        f"{nats_prefix}.pull.jobs", ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=2.0)
    )
    try:
        for data in (b"one", b"two"):
            await nc.jetstream().publish(f"{nats_prefix}.pull.jobs", data)
        held: list[Msg] = []
        while len(held) < 2:
            held += await pull.fetch(2, wait=1.0)
        async with worked_on(held, ack_wait=2.0):
            # Over two ack waits of work: without the heartbeat both would come again.
            assert await pull.fetch(2, wait=4.5) == []
        for msg in held:
            await msg.ack()
        info = await nc.jetstream().consumer_info(stream_name(nats_prefix), "recorder")
        assert info.num_redelivered == 0
    finally:
        await pull.close()


async def test_a_deleted_consumer_is_reported_by_fetch(nc: Client, nats_prefix: str) -> None:
    pull = await consumer(nc, nats_prefix)
    try:
        assert await pull.fetch(1, wait=0.1) == []
        await nc.jetstream().delete_consumer(stream_name(nats_prefix), "worker")
        with pytest.raises(nats.js.errors.APIError):
            for _ in range(20):
                await pull.fetch(1, wait=0.5)
    finally:
        await pull.close()


def start_nats(port: int, store: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class PrivateServer:
    """A nats-server of the test's own on `port`, which the test can stop and start again;
    `connect` adds a file-stored stream and returns a client that reconnects at once."""

    def __init__(self, port: int, store: Path) -> None:
        self.port = port
        self._store = store
        self.process = start_nats(port, store)
        self.nc: Client | None = None

    async def connect(self, stream: str) -> Client:
        await eventually(lambda: reachable("127.0.0.1", self.port))
        self.nc = await nats.connect(
            f"nats://127.0.0.1:{self.port}", reconnect_time_wait=0.1, max_reconnect_attempts=-1
        )
        await self.nc.jetstream().add_stream(
            StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"], storage=StorageType.FILE)
        )
        return self.nc

    async def restart(self, *, kill: bool) -> None:
        """Stop the server (killed, or a clean stop) and start it again; returns once `nc`
        has reconnected."""
        self.process.kill() if kill else self.process.terminate()
        await asyncio.to_thread(self.process.wait, 10)
        self.process = start_nats(self.port, self._store)
        nc = self.nc
        assert nc is not None
        await eventually(lambda: nc.stats["reconnects"] == 1 and nc.is_connected)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        self.process.terminate()
        await asyncio.to_thread(self.process.wait, 10)


async def test_after_the_server_restarts_the_next_request_goes_out_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_port: int
) -> None:
    # Requests that live far longer than the fetch below: only noticing the reconnect
    # can replace the one the old server took down with it.
    monkeypatch.setattr(pulling, "EXPIRES", 60.0)
    server = PrivateServer(held_port, tmp_path)
    try:
        nc = await server.connect("RESTART")
        pull = PullConsumer(nc, nc.jetstream(), "RESTART", "worker")
        await pull.start("restart.jobs", ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        assert await pull.fetch(1, wait=0.2) == []  # a request is open on this server
        # Killed, it cannot end the request with a "409 Server Shutdown".
        await server.restart(kill=True)
        await nc.jetstream().publish("restart.jobs", b"after the restart")
        msgs = await pull.fetch(1, wait=5.0)
        assert [m.data for m in msgs] == [b"after the restart"]
        await pull.close()
    finally:
        await server.close()


async def test_what_closing_hands_back_survives_a_server_restart(
    tmp_path: Path, held_port: int
) -> None:
    """As `genmesh up` stops its own server after its workers: a hand-back the server kept
    only in memory would come back only after the 30 s ack wait."""
    server = PrivateServer(held_port, tmp_path)
    try:
        nc = await server.connect("HANDBACK")
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0)
        first = PullConsumer(nc, nc.jetstream(), "HANDBACK", "worker")
        await first.start("handback.jobs", config)
        assert await first.fetch(3, wait=0.1) == []  # a request for three is open
        sent = {b"job %d" % n for n in range(3)}
        for data in sorted(sent):
            await nc.jetstream().publish("handback.jobs", data)
        await asyncio.sleep(0.2)  # all three delivered to `first`
        taken = await first.fetch(1, wait=1.0)
        await first.close()
        await nc.flush()
        await server.restart(kill=False)  # a clean stop, as Ctrl-C gives it
        second = PullConsumer(nc, nc.jetstream(), "HANDBACK", "worker")
        await second.start("handback.jobs", config)
        got = {taken[0].data}
        deadline = time.monotonic() + 10
        while got != sent and time.monotonic() < deadline:
            for msg in await second.fetch(3, wait=1.0):
                got.add(msg.data)
                await msg.ack()
        await second.close()
        assert got == sent
    finally:
        await server.close()


class Proxy:
    """A TCP relay on loopback to a NATS server; `cut` drops the connections through it
    (the server sees its client go) while the server itself runs on."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 4222)
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_w.transport.abort()
            return
        self._writers += [client_w, server_w]
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@pytest.fixture(params=["private", "shared"])
def upstream(request: pytest.FixtureRequest, nats_url: str) -> Iterator[str]:
    """The packaged nats-server (private) and the local one, which may be older."""
    if request.param == "shared":
        yield nats_url
        return
    with private_nats_server() as url:
        yield url


async def test_a_request_that_outlives_a_reconnect_delivers_nothing_beside_the_next(
    upstream: str, nats_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nats-server keeps a pull request while its reply subject has interest whenever it
    # looks, not while the connection that sent it lives: a client that reconnects and
    # subscribes the same reply subject again finds its old request still open (then all
    # ten messages below go out, five to each request). The requests here outlive the
    # test, so nothing but lost interest can end the old one.
    monkeypatch.setattr(pulling, "EXPIRES", 60.0)
    async with Proxy(upstream) as proxy:
        nc = await nats.connect(proxy.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        try:
            js = nc.jetstream()
            stream = stream_name(nats_prefix)
            await js.add_stream(StreamConfig(name=stream, subjects=[f"{nats_prefix}.pull.>"]))
            pull = await consumer(nc, nats_prefix)
            assert await pull.fetch(5, wait=0.1) == []  # a request for five is open
            proxy.cut()
            await eventually(lambda: nc.stats["reconnects"] == 1 and nc.is_connected)
            assert await pull.fetch(5, wait=0.3) == []  # and now the next request for five
            sent = {b"job %d" % n for n in range(10)}
            for data in sorted(sent):
                await js.publish(f"{nats_prefix}.pull.jobs", data)

            async def delivered() -> int:
                return (await js.consumer_info(stream, "worker")).num_ack_pending

            await eventually(delivered)
            await asyncio.sleep(0.5)  # room for any delivery beyond the open request
            info = await js.consumer_info(stream, "worker")
            assert (info.num_ack_pending, info.num_pending) == (5, 5)
            got = await pull.fetch(10, wait=1.0)
            assert len(got) == 5
            # Nothing lost: the other five go to the requests that follow, long before
            # the 30 s ack_wait would bring back anything held and dropped.
            deadline = time.monotonic() + 10
            while len(got) < 10 and time.monotonic() < deadline:
                got += await pull.fetch(5, wait=1.0)
            for msg in got:
                await msg.ack()
            assert {m.data for m in got} == sent
            await pull.close()
        finally:
            await nc.close()


async def test_an_outage_is_logged_once_each_way_without_tracebacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, held_port: int
) -> None:
    port = held_port
    server = start_nats(port, tmp_path)
    try:
        await eventually(lambda: reachable("127.0.0.1", port), within=10)
        async with connect(f"nats://127.0.0.1:{port}", "outage-test") as nc:
            caplog.clear()
            server.kill()
            server.wait()
            await eventually(lambda: nc.is_reconnecting, within=10)
            await asyncio.sleep(2.0)  # four reconnect attempts, each refused
            server = start_nats(port, tmp_path)
            await eventually(lambda: nc.is_connected, within=15)
    finally:
        server.kill()
        server.wait()
    said = [r.getMessage() for r in caplog.records if r.name.startswith(("nats", "services"))]
    # The lost connection (nats-py's word for it, then ours), the refusal once, its return,
    # and nothing else: not a line per refused attempt, no traceback, nothing for the
    # deliberate close.
    assert [m for m in said if "disconnected; reconnecting" in m] == [
        "nats (outage-test): disconnected; reconnecting"
    ]
    assert len([m for m in said if "Connect call failed" in m]) == 1, said
    assert said[-1].startswith("nats (outage-test): reconnected after")
    assert len(said) <= 4, said
    assert not [r for r in caplog.records if r.exc_info]
