"""Provider worker settings (GENMESH_* environment variables)."""

from __future__ import annotations

from services.common.settings import BusSettings, OptionalListenAddress, ServiceAddress
from services.providers.events import LINGER, PROGRESS_LINGER


class Settings(BusSettings):
    # Comma-separated provider instances (catalog names) this worker serves; "auto" serves
    # every instance that needs no key or whose key is set.
    worker_providers: str = "sandbox"
    # The provider catalog (TOML); empty uses the one shipped in services/providers.
    providers_file: str = ""
    # Jobs one worker process runs at once (async; most time is spent waiting on providers).
    worker_concurrency: int = 1000
    # Seconds JetStream waits for an ack before redelivering; the worker heartbeats well
    # inside it, so only a dead worker's jobs are redelivered.
    worker_ack_wait: float = 30.0
    # Deliveries of one job on an instance before it gives up and the job falls back; a
    # catalog instance's max_retries overrides it.
    worker_max_deliver: int = 5
    # AssetService, where outputs are stored.
    storage_addr: ServiceAddress = "127.0.0.1:50052"
    # Optional gRPC health endpoint for orchestrators; empty disables it.
    listen: OptionalListenAddress = ""
    # Seconds a stopping worker waits for running jobs before cancelling them (they are
    # redelivered to another worker).
    worker_drain_timeout: float = 10.0
    # Seconds a job's events are held back so that they travel together, and with the
    # outcome when the job ends by then; 0 sends them without waiting. An event in a new
    # state, or with a new preview, waits worker_event_linger; other progress waits
    # worker_progress_linger (at least worker_event_linger).
    worker_event_linger: float = LINGER
    worker_progress_linger: float = PROGRESS_LINGER
