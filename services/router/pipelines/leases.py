"""Claims on driving a pipeline, so one router replica drives each and another adopts it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another router took the pipeline over (this one failed to renew in time)."""


class Lease:
    """A held claim; keep() renews it until cancelled, release() gives it up."""

    def __init__(self, kv: KeyValue, key: str, owner: bytes, revision: int, ttl: float) -> None:
        self._kv = kv
        self._key = key
        self._owner = owner
        self._revision = revision
        self._ttl = ttl

    async def keep(self) -> None:
        """Renew well inside the TTL; raises LeaseLost when another owner has the key."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                self._revision = await self._kv.update(self._key, self._owner, last=self._revision)
            except KeyWrongLastSequenceError as exc:
                raise LeaseLost(self._key) from exc
            except Exception:
                # A NATS hiccup: try again at the next tick, while the claim still stands.
                log.warning("renewing the lease on %s failed", self._key, exc_info=True)

    async def release(self) -> None:
        with contextlib.suppress(Exception):
            await self._kv.delete(self._key, last=self._revision)


class Leases:
    """One KV key per pipeline job; the bucket's TTL makes a dead router's claims lapse."""

    def __init__(self, kv: KeyValue, owner: str, ttl: float) -> None:
        self._kv = kv
        self._owner = owner.encode()
        self._ttl = ttl

    async def claim(self, job_id: str) -> Lease | None:
        """The lease on `job_id`, or None while another router holds it."""
        try:
            revision = await self._kv.create(job_id, self._owner)
        except KeyWrongLastSequenceError:
            return None
        return Lease(self._kv, job_id, self._owner, revision, self._ttl)
