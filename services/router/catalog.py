"""The provider catalog, kept current from workers' registrations in a KV bucket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js.kv import KeyValue

from genmesh.v1 import provider_service_pb2
from services.common.cancelling import cancel_tasks
from services.common.kv_follow import follow, removed

log = logging.getLogger(__name__)

# Seconds an aggregated view of the providers is reused before it is built again (a
# registration arriving rebuilds it at once); liveness is judged at this granularity.
VIEW_TTL = 0.5


class Catalog:
    """Providers as workers declare them; health from how recently each worker reported."""

    def __init__(self, kv: KeyValue, liveness: float, retention: float = 3600.0) -> None:
        self._kv = kv
        self._liveness = liveness
        # Seconds a gone worker's registration is kept before it is deleted.
        self._retention = retention
        # provider name -> worker key -> that worker's registration
        self._entries: dict[str, dict[str, provider_service_pb2.Provider]] = {}
        self._task: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        # name -> aggregated Provider, shared by every caller until rebuilt
        self._views: dict[str, provider_service_pb2.Provider] = {}
        self._views_at = -VIEW_TTL

    async def start(self) -> None:
        """Load the current registrations, then follow updates in the background."""
        self._task = await follow(self._kv, self._apply)
        self._pruner = asyncio.create_task(self._prune_loop())

    async def stop(self) -> None:
        await cancel_tasks([self._task, self._pruner])

    async def prune(self) -> list[str]:
        """Delete registrations of workers gone longer than the retention; returns their keys.

        Each worker registers under its own id, so without this every restart would leave a
        key behind for ever. The newest registration of a provider always stays, so the
        provider remains known (and its jobs queue) until a worker serves it again."""
        now = time.time()
        stale = []
        for name, group in list(self._entries.items()):
            by_age = sorted(group.items(), key=lambda kv: kv[1].health.last_seen.ToNanoseconds())
            for worker, reg in by_age[:-1]:
                if now - reg.health.last_seen.ToNanoseconds() / 1e9 > self._retention:
                    stale.append(f"{name}.{worker}")
        for key in stale:
            with contextlib.suppress(Exception):
                await self._kv.delete(key)
        return stale

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self._retention))
            try:
                pruned = await self.prune()
            except Exception:
                log.warning("pruning provider registrations failed", exc_info=True)
            else:
                if pruned:
                    log.info("pruned %d stale provider registration(s)", len(pruned))

    def _apply(self, entry: KeyValue.Entry) -> None:
        provider_name, _, worker = entry.key.partition(".")
        group = self._entries.setdefault(provider_name, {})
        self._views_at = -VIEW_TTL
        if removed(entry) or entry.value is None:
            group.pop(worker, None)
            return
        reg = provider_service_pb2.Provider()
        try:
            reg.ParseFromString(entry.value)
        except Exception:
            log.warning("undecodable provider registration %s", entry.key)
            return
        group[worker] = reg

    def providers(self, task: int = 0) -> list[provider_service_pb2.Provider]:
        """Every known provider (serving `task`, if given) with aggregated health, by name.

        The messages are shared with every other caller until the next rebuild: read them,
        or copy before changing anything."""
        views = self._current()
        return [p for p in views.values() if not task or task in p.tasks]

    def get(self, name: str) -> provider_service_pb2.Provider | None:
        """One provider's shared view (see providers), or None if no worker ever served it."""
        return self._current().get(name)

    def left(self, worker_id: str) -> bool:
        """True when the worker said it was stopping, in each registration it made: it
        handed back what it did not finish."""
        regs = [group[worker_id] for group in self._entries.values() if worker_id in group]
        return bool(regs) and all(r.health.live_workers == 0 for r in regs)

    def _current(self) -> dict[str, provider_service_pb2.Provider]:
        # Rebuilt at most every VIEW_TTL: submits read the catalog several times each.
        now = time.monotonic()
        if now - self._views_at >= VIEW_TTL:
            views = {}
            for name in sorted(self._entries):
                provider = self._aggregate(name)
                if provider is not None:
                    views[name] = provider
            self._views, self._views_at = views, now
        return self._views

    def _aggregate(self, name: str) -> provider_service_pb2.Provider | None:
        group = self._entries.get(name)
        if not group:
            return None
        now = time.time()
        regs = sorted(group.values(), key=lambda r: r.health.last_seen.ToNanoseconds())
        live = [
            r
            for r in regs
            if r.health.live_workers > 0
            and now - r.health.last_seen.ToNanoseconds() / 1e9 <= self._liveness
        ]
        provider = provider_service_pb2.Provider()
        provider.CopyFrom(regs[-1])
        health = provider.health
        health.live_workers = len(live)
        health.in_flight = sum(r.health.in_flight for r in live)
        calls = sum(r.health.recent_calls for r in live)
        failed = sum(r.health.recent_calls * r.health.recent_error_rate for r in live)
        health.recent_calls = calls
        health.recent_error_rate = failed / calls if calls else 0.0
        if not live:
            age = now - regs[-1].health.last_seen.ToNanoseconds() / 1e9
            health.status = provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE
            health.reason = f"no live worker (last heard from {age:.0f}s ago)"
        else:
            broken = [
                r for r in live if r.health.status != provider_service_pb2.PROVIDER_STATUS_AVAILABLE
            ]
            down = [
                r
                for r in broken
                if r.health.status == provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE
            ]
            if len(down) == len(live):
                health.status = provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE
                health.reason = down[-1].health.reason
            elif broken:
                # Some workers cannot serve it, or it fails often: usable, but not well.
                health.status = provider_service_pb2.PROVIDER_STATUS_DEGRADED
                health.reason = broken[-1].health.reason
            else:
                health.status = provider_service_pb2.PROVIDER_STATUS_AVAILABLE
                health.reason = ""
        return provider
