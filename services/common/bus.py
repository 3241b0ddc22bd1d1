"""NATS naming and connection: every stream, subject and bucket name comes from here."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from services.common.backoff import patiently
from services.common.errors import CannotStart

log = logging.getLogger(__name__)

# Seconds a service starting up waits for JetStream to answer before it gives up.
JETSTREAM_PATIENCE = 60.0

# What a request to NATS raises while it is out of reach for now: no connection, a stalled or
# restarting server, no JetStream answer in time. What was sent may still arrive (a publish's
# Nats-Msg-Id makes a second copy harmless). A refusal for good, such as a message over the
# size limit, is not among them: retrying it would never end.
UNCONFIRMED: tuple[type[Exception], ...] = (
    TimeoutError,  # nats.errors.TimeoutError among them
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


@dataclass(frozen=True)
class Bus:
    """Names derived from one prefix, so several meshes (or tests) share a NATS server."""

    prefix: str = "genmesh"
    replicas: int = 1

    @property
    def _upper(self) -> str:
        return self.prefix.upper().replace(".", "_").replace("-", "_")

    # Streams and consumers.
    @property
    def jobs_stream(self) -> str:
        return f"{self._upper}_JOBS"

    @property
    def events_stream(self) -> str:
        return f"{self._upper}_EVENTS"

    def jobs_subject(self, provider: str) -> str:
        return f"{self.prefix}.jobs.{provider}"

    def events_subject(self, job_id: str) -> str:
        return f"{self.prefix}.events.{job_id}"

    @property
    def events_wildcard(self) -> str:
        return f"{self.prefix}.events.>"

    def worker_consumer(self, provider: str) -> str:
        return f"{self._upper}_worker_{provider}".replace(".", "_")

    @property
    def recorder_consumer(self) -> str:
        return f"{self._upper}_recorder"

    # Core NATS subjects (fire-and-forget fan-out).
    def watch_subject(self, origin: str, job_id: str) -> str:
        """Where the router replica `origin` announces a recorded event of `job_id`."""
        return f"{self.prefix}.watch.{origin}.{job_id}"

    @property
    def watch_wildcard(self) -> str:
        return f"{self.prefix}.watch.*.*"

    def worker_subject(self, worker_id: str) -> str:
        """Where a worker answers which jobs it is running (services.providers.liveness)."""
        return f"{self.prefix}.worker.{worker_id}"

    @property
    def cancel_subject(self) -> str:
        return f"{self.prefix}.cancel"

    # KV buckets.
    @property
    def providers_bucket(self) -> str:
        return f"{self._upper}_providers"

    @property
    def cancellations_bucket(self) -> str:
        return f"{self._upper}_cancellations"

    async def ensure_streams(self, js: JetStreamContext) -> None:
        """Create (or update) the streams; safe to call from every service at start-up.

        Waits up to JETSTREAM_PATIENCE for JetStream to answer: a cluster that has just
        started elects its leaders first, and a service started beside it should not fail."""
        waited: list[Exception] = []

        def unanswered(exc: Exception) -> bool:
            if not isinstance(exc, UNCONFIRMED):
                return False
            if not waited:
                log.warning(
                    "JetStream does not answer yet (%r); waiting up to %.0f s",
                    exc,
                    JETSTREAM_PATIENCE,
                )
            waited.append(exc)
            return True

        await patiently(
            lambda: self._ensure_streams(js),
            unanswered,
            patience=JETSTREAM_PATIENCE,
            first=0.25,
            most=2.0,
        )
        if waited:
            log.warning("JetStream answered")

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        await _ensure_stream(
            js,
            self.prefix,
            StreamConfig(
                name=self.jobs_stream,
                subjects=[f"{self.prefix}.jobs.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=120.0,
            ),
        )
        await _ensure_stream(
            js,
            self.prefix,
            StreamConfig(
                name=self.events_stream,
                subjects=[self.events_wildcard],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                # Events are durable in the router's store once recorded; the stream only
                # has to hold them until then.
                max_age=7 * 24 * 3600.0,
                discard=DiscardPolicy.OLD,
                duplicate_window=120.0,
            ),
        )

    @property
    def requests_bucket(self) -> str:
        return f"{self._upper}_requests"

    async def requests_kv(self, js: JetStreamContext) -> KeyValue:
        """Provider request ids by "<job>-<attempt>", so a redelivered job resumes, not repays."""
        return await _ensure_kv(
            js,
            KeyValueConfig(
                bucket=self.requests_bucket, history=1, ttl=7 * 24 * 3600.0, replicas=self.replicas
            ),
        )

    async def providers_kv(self, js: JetStreamContext) -> KeyValue:
        return await _ensure_kv(
            js, KeyValueConfig(bucket=self.providers_bucket, history=1, replicas=self.replicas)
        )

    async def cancellations_kv(self, js: JetStreamContext) -> KeyValue:
        return await _ensure_kv(
            js,
            KeyValueConfig(
                bucket=self.cancellations_bucket, history=1, ttl=24 * 3600.0, replicas=self.replicas
            ),
        )

    @property
    def pipelines_bucket(self) -> str:
        return f"{self._upper}_pipelines"

    async def pipeline_leases_kv(self, js: JetStreamContext, ttl: float) -> KeyValue:
        """Which router drives each running pipeline; a claim not renewed within `ttl` lapses."""
        return await _ensure_kv(
            js,
            KeyValueConfig(
                bucket=self.pipelines_bucket, history=1, ttl=ttl, replicas=self.replicas
            ),
        )

    @property
    def routers_bucket(self) -> str:
        return f"{self._upper}_routers"

    async def routers_kv(self, js: JetStreamContext, ttl: float) -> KeyValue:
        """Router replicas' heartbeats; a key not renewed within `ttl` is cleared away."""
        return await _ensure_kv(
            js,
            KeyValueConfig(bucket=self.routers_bucket, history=1, ttl=ttl, replicas=self.replicas),
        )


class PrefixTaken(CannotStart):
    """Another mesh on the NATS server has streams under this mesh's names."""


async def _ensure_stream(js: JetStreamContext, prefix: str, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        # Exists with a different config: bring it to ours, unless it is another mesh's.
        # Prefixes that differ only in case, "-", "_" or "." give the same stream names, and
        # updating the stream would take that mesh's jobs and events.
        assert config.name is not None
        existing = (await js.stream_info(config.name)).config.subjects or []
        theirs = [s for s in existing if not s.startswith(f"{prefix}.")]
        if theirs:
            raise PrefixTaken(
                f"NATS stream {config.name} carries {', '.join(theirs)}: another mesh, whose "
                f"prefix differs from {prefix!r} only in case, '-', '_' or '.', uses it; give "
                "this one a GENMESH_NATS_PREFIX of its own"
            ) from None
        await js.update_stream(config)


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)
    # Made by an earlier start, maybe with other settings: brought to ours, as streams are.
    # A TTL kept from before would expire keys renewed on the new schedule (pipeline leases
    # lost mid-drive, replicas' heartbeats), and GENMESH_NATS_REPLICAS would not apply.
    stream = (await kv.status()).stream_info.config
    ttl = config.ttl or 0.0
    if (stream.max_age or 0.0) != ttl or stream.num_replicas != config.replicas:
        await js.update_stream(
            replace(
                stream,
                max_age=ttl,
                num_replicas=config.replicas,
                # As create_key_value sets it: never longer than the TTL, or the update fails.
                duplicate_window=min(_KV_DUPLICATE_WINDOW, ttl) if ttl else _KV_DUPLICATE_WINDOW,
            )
        )
    return kv


# Seconds: nats-py's duplicate window for a new bucket.
_KV_DUPLICATE_WINDOW = 120.0


class _ConnectionLog:
    """One line when the connection goes down and one when it is back, rather than nats-py's
    error and traceback for every reconnect attempt (two a second for as long as it lasts)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._down_since: float | None = None
        # What was said during the current outage: each different error once (a refused
        # connection while it lasts, but also an authorization or TLS failure that will not
        # go away by itself).
        self._said: set[str] = set()
        # Set once connected: a disconnect while it drains or closes is our own doing.
        self.nc: Client | None = None

    async def error(self, exc: Exception) -> None:
        said = f"{type(exc).__name__}: {exc}"
        if said not in self._said:
            # Down, or not yet connected (the first connect retries too): each error once.
            if self._down_since is not None or self.nc is None:
                self._said.add(said)
            log.warning("nats (%s): %s", self._name, str(exc) or type(exc).__name__)

    def connected(self, nc: Client) -> None:
        self.nc = nc
        self._said.clear()

    async def disconnected(self) -> None:
        leaving = self.nc is None or self.nc.is_closed or self.nc.is_draining
        if self._down_since is None and not leaving:
            self._down_since = time.monotonic()
            log.warning("nats (%s): disconnected; reconnecting", self._name)

    async def reconnected(self) -> None:
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self._down_since = None
            self._said.clear()
            log.warning("nats (%s): reconnected after %.1f s", self._name, down)


def nats_servers(url: str) -> list[str]:
    """The servers GENMESH_NATS_URL names: one URL, or several comma-separated (a cluster's
    seeds, any one of which lets a client in; the others it learns from the cluster)."""
    return [part.strip() for part in url.split(",") if part.strip()]


@asynccontextmanager
async def connect(url: str, name: str, *, no_echo: bool = False) -> AsyncIterator[Client]:
    """A NATS connection that drains on exit, so nothing published is left behind.

    With `no_echo`, its own subscriptions never hear what it publishes itself."""
    said = _ConnectionLog(name)
    nc = await nats.connect(
        nats_servers(url),
        name=name,
        no_echo=no_echo,
        error_cb=said.error,
        disconnected_cb=said.disconnected,
        reconnected_cb=said.reconnected,
        # A subscription left with unread messages holds drain() this long, not 30 s.
        drain_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
    )
    said.connected(nc)
    try:
        yield nc
    finally:
        if not nc.is_closed:
            await nc.drain()
