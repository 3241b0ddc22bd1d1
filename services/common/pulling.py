"""Pulling from a durable JetStream consumer without nats-py's fetch().

nats-py's `fetch()` (2.16, nats-io/nats.py#986) sometimes takes a late "408 Request
Timeout" of the pull request before as the answer to its own, sends another request
beside the one still open, and leaves one of them orphaned on the server. The next
message then goes to the orphan, and the fetch that receives it waits for the rest of its
batch until that request expires: up to a second for the first job after a quiet spell.

Here one pull request is open at a time, and each has its own reply subject, so a late
status is recognised as belonging to an earlier request and ignored. A request stays
open across `fetch` calls until the server ends it or fills it; messages are handed over
as soon as they arrive.

A request whose end was not heard (the connection was lost, or it outlived its expiry)
may still be open. nats-server keeps a waiting pull request while its reply subject has
interest whenever it looks (before delivering to it, and when sweeping out expired
requests), whichever connection that interest belongs to: a client that reconnects (a
dropped TCP connection, a cluster client failing over) and subscribes the same subjects
again revives it. A restarted server has forgotten it instead. Delivered messages carry
their stream subject, not the reply subject, so what such a request brings beside the
next one cannot be told apart on a shared subscription. So the next request goes out on
a fresh inbox, and then the old inbox's subscription is drained: the server drops the
old request when it next looks for interest, and what it sent before is nak'd (or, if it
slips through the drain, redelivered after ack_wait). The consumer thus never holds more
delivered messages than its open request asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX, ConsumerConfig, Header

# Seconds a pull request stays open on the server. Short, because a request whose end
# is lost some other way than a reconnect is only noticed when it should have ended:
# after this plus GRACE.
EXPIRES = 2.0
GRACE = 1.0
# Seconds between looks at the connection's reconnect count while waiting.
RECONNECT_CHECK = 0.25
# Seconds before a message handed back is sent again. Any delay makes nats-server store the
# nak; an immediate one lives in its memory only, so a server restarted meanwhile (as
# `genmesh up` restarts its own) sends the message again only after the ack wait.
HAND_BACK_DELAY = 0.01
# Statuses that end a pull request in the normal course: no messages, expired.
_ENDS = {"404", "408"}


class PullConsumer:
    """A durable pull consumer, created if missing; `fetch` hands out what it delivers."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str, durable: str) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._durable = durable
        self._next_subject = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        # Reply subjects are `<inbox>.<n>`, all on one subscription, made at the first
        # request after the inbox changes.
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._ready: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        self._requests = 0
        # The open request: its reply subject, messages it may still bring, and when to
        # stop waiting for the server to end it.
        self._open = ""
        self._left = 0
        self._lapses = 0.0
        self._reconnects = 0  # the connection's count when the open request went out
        self._failure: nats.js.errors.APIError | None = None
        self._interrupted = False

    async def start(self, subject: str, config: ConsumerConfig) -> None:
        """Create the consumer unless it exists; an existing one keeps its config but takes
        this one's ack_wait, so a changed setting applies to messages from now on."""
        try:
            info = await self._js.consumer_info(self._stream, self._durable)
        except nats.js.errors.NotFoundError:
            config.durable_name = config.name = self._durable
            config.filter_subject = subject
            await self._js.add_consumer(self._stream, config=config)
            return
        # Whoever heartbeats a message does so by their own ack_wait: left at an older,
        # shorter value, the server would redeliver messages still being worked on.
        if config.ack_wait is not None and info.config.ack_wait != config.ack_wait:
            await self._js.add_consumer(
                self._stream, config=info.config.evolve(ack_wait=config.ack_wait)
            )

    async def fetch(self, batch: int, wait: float) -> list[Msg]:
        """Up to `batch` delivered messages, as soon as there is one; [] after `wait`
        seconds without any. Raises the server's error when it refuses a pull request."""
        deadline = time.monotonic() + wait
        while True:
            if self._ready:
                return [self._ready.popleft() for _ in range(min(batch, len(self._ready)))]
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._interrupted:
                self._interrupted = False
                return []
            now = time.monotonic()
            if now >= deadline:
                return []
            # Cleared before any await, so an arrival during the request below still
            # wakes the wait.
            self._arrived.clear()
            wake = min(deadline, now + RECONNECT_CHECK)
            # While reconnecting a request would only be buffered, and sent beside the
            # one that the reconnect calls for.
            if not self._nc.is_reconnecting:
                if not self._open:
                    await self._request(batch)
                elif now > self._lapses or self._reconnected():
                    await self._abandon(batch)
                wake = min(wake, self._lapses)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake - time.monotonic()):
                    await self._arrived.wait()

    def interrupt(self) -> None:
        """End the fetch under way now, with what has arrived (if anything), or else the
        next one: a caller that stops fetching need not wait out its `wait`."""
        self._interrupted = True
        self._arrived.set()

    async def close(self) -> None:
        """Stop pulling; messages delivered but not handed out go back for redelivery now."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        while self._ready:
            with contextlib.suppress(Exception):
                await hand_back(self._ready.popleft())

    async def _abandon(self, batch: int) -> None:
        """Replace the open request, whose end was not heard, and its inbox."""
        # From here on what the old subscription brings is nak'd (_on_message). The new
        # request goes out before the old subscription's unsubscribe and those naks, so
        # that the server finds it waiting when they arrive: nats-server before 2.10.16
        # loses a nak'd message until ack_wait (before 2.10.14 also sending another one
        # twice) when the only requests waiting then have no interest.
        old, self._sub = self._sub, None
        self._inbox = self._nc.new_inbox()
        try:
            await self._request(batch)
        finally:
            if old is not None:
                await self._let_go(old)

    async def _let_go(self, old: Subscription) -> None:
        """Unsubscribe an abandoned inbox, letting what is already on its way be nak'd."""
        # nats-py's drain writes its PING ahead of the UNSUB still in its buffer, so what
        # the server sends between the two is dropped here and redelivered only after
        # ack_wait: late, never handed out.
        try:
            await old.drain()
        except BaseException:
            # A drain that failed or was cut short (a closed connection, no answer for
            # 10 s, cancellation) may leave the subscription registered, to be subscribed
            # again on the next reconnect and revive the old request: remove it outright.
            with contextlib.suppress(Exception):
                await old.unsubscribe()
            raise

    async def _request(self, batch: int) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(
                f"{self._inbox}.*", cb=functools.partial(self._on_message, self._inbox)
            )
        self._requests += 1
        self._open = f"{self._inbox}.{self._requests}"
        self._left = batch
        self._lapses = time.monotonic() + EXPIRES + GRACE
        self._reconnects = self._nc.stats["reconnects"]
        pull = {"batch": batch, "expires": int(EXPIRES * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(pull).encode(), reply=self._open)

    def _reconnected(self) -> bool:
        # A restarted server has forgotten the open request; one that was not restarted
        # may still have it.
        return self._nc.stats["reconnects"] != self._reconnects

    async def _on_message(self, inbox: str, msg: Msg) -> None:
        status = msg.headers.get(Header.STATUS) if msg.headers else None
        if inbox != self._inbox:
            # From a request given up: back to the stream at once.
            if status is None:
                with contextlib.suppress(Exception):
                    await hand_back(msg)
            return
        if status is None:
            self._ready.append(msg)
            # Every earlier request on this inbox was heard to end (or filled) before the
            # open one went out, so this message is the open request's.
            self._left -= 1
            if self._left <= 0:
                self._open = ""  # filled: the server sends no status for that
            self._arrived.set()
            return
        if msg.subject != self._open:
            return  # a late word about an earlier request
        self._open = ""
        if status not in _ENDS:
            # E.g. 409 Consumer Deleted: the caller hears of it and decides when to retry.
            description = msg.headers.get(Header.DESCRIPTION, "") if msg.headers else ""
            self._failure = nats.js.errors.APIError(code=int(status), description=description)
        self._arrived.set()


async def hand_back(msg: Msg) -> None:
    """Nak `msg` to be sent again at once, by a server restarted meanwhile too."""
    await msg.nak(delay=HAND_BACK_DELAY)


@contextlib.asynccontextmanager
async def worked_on(msgs: Sequence[Msg], ack_wait: float) -> AsyncIterator[None]:
    """Tell the server every third of `ack_wait` that `msgs` are still being worked on,
    so a short ack_wait (quick redelivery after a consumer dies) spares slow work."""
    every = ack_wait / 3

    async def beat() -> None:
        while True:
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(every)

    beating: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    # A timer, not a task: most work ends long before the first beat is due.
    due = loop.call_later(every, lambda: beating.append(loop.create_task(beat())))
    try:
        yield
    finally:
        due.cancel()
        for task in beating:
            task.cancel()
