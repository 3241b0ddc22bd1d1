"""A circuit breaker per provider instance: stop sending jobs to one that keeps failing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from genmesh.v1 import provider_service_pb2

CLOSED = provider_service_pb2.CIRCUIT_STATE_CLOSED
OPEN = provider_service_pb2.CIRCUIT_STATE_OPEN
HALF_OPEN = provider_service_pb2.CIRCUIT_STATE_HALF_OPEN


@dataclass
class _Circuit:
    failures: int = 0
    # Monotonic time the circuit opened; None while closed.
    opened_at: float | None = None
    # Monotonic time a half-open probe was sent; None when no probe is out.
    probe_at: float | None = None


class Breakers:
    """Consecutive failures open a provider's circuit; after `cooldown` seconds one job goes
    as a probe, and its outcome closes the circuit or opens it for another cool-down.

    Kept in each router replica's memory: replicas learn of failures from the same event
    stream, but each counts only the outcomes its own recorder applied."""

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # 0 disables the breakers: every circuit stays closed.
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def state(self, provider: str) -> provider_service_pb2.CircuitState.ValueType:
        circuit = self._circuits.get(provider)
        if circuit is None or circuit.opened_at is None:
            return CLOSED
        if self._clock() - circuit.opened_at < self._cooldown:
            return OPEN
        return HALF_OPEN

    def allows(self, provider: str) -> bool:
        """True when a job may go to `provider` now (closed, or half-open with no probe out)."""
        state = self.state(provider)
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        probe_at = self._circuits[provider].probe_at
        # A probe whose outcome never came back (lost, cancelled) stops blocking after a
        # further cool-down.
        return probe_at is None or self._clock() - probe_at >= self._cooldown

    def dispatched(self, provider: str) -> None:
        """A job was sent to `provider`; in half-open state it is the probe."""
        if self.state(provider) == HALF_OPEN:
            self._circuits[provider].probe_at = self._clock()

    def succeeded(self, provider: str) -> None:
        self._circuits.pop(provider, None)

    def failed(self, provider: str) -> None:
        """A provider-side failure (not the caller's invalid input)."""
        if self._threshold <= 0:
            return
        circuit = self._circuits.setdefault(provider, _Circuit())
        circuit.failures += 1
        if self.state(provider) == HALF_OPEN or circuit.failures >= self._threshold:
            circuit.opened_at = self._clock()
            circuit.probe_at = None

    def released(self, provider: str) -> None:
        """An attempt ended with no verdict on the provider (cancelled): free the probe."""
        circuit = self._circuits.get(provider)
        if circuit is not None:
            circuit.probe_at = None
