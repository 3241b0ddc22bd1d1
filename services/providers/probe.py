"""A cached reachability probe for adapters whose provider has a cheap authenticated endpoint.

The worker asks every adapter for its health every few seconds; probing the provider that
often would spend its rate limit on health checks, so the answer is kept for a while."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from services.providers.adapter import ProviderError, Retryable


class CachedProbe:
    """Runs `probe` at most once per `ttl` seconds and remembers why it failed, if it did.

    The probe fails by raising a ProviderError, or by returning the reason as a string (for
    checks that are more than one call, such as "model X not pulled"); anything else it
    returns means healthy."""

    def __init__(self, probe: Callable[[], Awaitable[object]], ttl: float = 60.0) -> None:
        self._probe = probe
        self._ttl = ttl
        self._checked_at = -float("inf")
        self._reason = ""

    async def reason(self) -> str:
        """ "" when the last probe succeeded, otherwise its classified failure message."""
        now = time.monotonic()
        if now - self._checked_at < self._ttl:
            return self._reason
        try:
            outcome = await self._probe()
        except Retryable as exc:
            self._reason = f"unreachable: {exc.message}"
        except ProviderError as exc:
            self._reason = exc.message
        else:
            self._reason = outcome if isinstance(outcome, str) else ""
        self._checked_at = now
        return self._reason
