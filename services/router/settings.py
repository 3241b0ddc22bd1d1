"""Router settings (GENMESH_* environment variables)."""

from __future__ import annotations

from pydantic import Field, field_validator

from services.common.settings import (
    BusSettings,
    DatabaseSettings,
    ListenAddress,
    ServiceAddress,
)
from services.router.ordering import LONGEST_ACK_WAIT
from services.router.selection import parse_policy, parse_weights


class Settings(BusSettings, DatabaseSettings):
    # Where this router's gRPC server listens (GenerateService, JobService, ProviderService).
    listen: ListenAddress = "127.0.0.1:50051"
    # AssetService, to check that input assets exist.
    storage_addr: ServiceAddress = "127.0.0.1:50052"
    # PromptService, for the prompt work that is more than a check (optimization, enhancement).
    prompt_addr: ServiceAddress = "127.0.0.1:50053"
    # Longest prompt accepted, in characters; checked in the router itself (the same rules
    # as PromptService.ValidatePrompt), so a submit costs no extra hop.
    prompt_max_length: int = 10_000
    # Seconds a worker's event fetched by a router replica may stay unacknowledged before
    # another replica (or this one, restarted) gets it again: after a replica dies, how long
    # the events it held, and their jobs' later events, wait. Give every replica the same;
    # at most 30, which a job's later events outwait before they are applied regardless.
    recorder_ack_wait: float = Field(5.0, gt=0, le=LONGEST_ACK_WAIT)
    # Seconds a worker with running jobs may have no NATS connection (its subscription gone,
    # so nothing answers it) before its jobs go to another worker at once, rather than after
    # the jobs consumer's ack wait; 0 leaves them to the ack wait.
    worker_lost_after: float = Field(5.0, ge=0)
    # Seconds without a heartbeat before a provider's worker counts as gone.
    provider_liveness: float = 15.0
    # Seconds a gone worker's registration is kept (it shows as not live) before deletion.
    provider_retention: float = 3600.0
    # How jobs that name no provider (or only prefer one) are routed by default: priority,
    # cost, latency, least_busy or weighted; a job may ask for another.
    routing_policy: str = "priority"
    # Provider instances in order of preference for the priority policy ("a,b,c"); the rest
    # follow by name.
    routing_priority: str = ""
    # Weights for the weighted policy ("a=3,b=1"); unlisted providers weigh 1.
    routing_weights: str = ""
    # Providers a job may be dispatched to in all (the first choice and its fallbacks).
    routing_max_attempts: int = 3
    # Consecutive provider-side failures that open a provider's circuit; 0 never opens it.
    circuit_failures: int = 5
    # Seconds an open circuit waits before letting one probe job through.
    circuit_cooldown: float = 30.0
    # Seconds a job may show no progress before a second candidate starts beside it (the
    # first to complete wins, the other is cancelled); 0 never hedges. JobSpec.hedge_after
    # overrides it per job.
    hedge_after: float = 0.0
    # Seconds between sweeps for jobs past their deadline that no worker is running to an
    # end (a running job is stopped by its worker at the deadline itself).
    deadline_sweep_interval: float = 1.0
    # Seconds a router's claim on driving a pipeline lasts unrenewed: after a router dies,
    # another (or it, restarted) adopts its pipelines within about twice this.
    pipeline_lease: float = 15.0
    # Seconds without a heartbeat before another router replica stops counting toward the
    # split of providers' rate limits (a replica that stops cleanly stops counting at once);
    # heartbeats go out every third of it. Give every replica the same value.
    router_liveness: float = 6.0
    # Jobs allowed to wait in a provider's JetStream queue before the router holds further
    # ones back in memory (already stored), releasing them highest priority first as the
    # queue drains; a small number keeps priorities meaningful, a large one saves a hop.
    admission_backlog: int = 32
    # Seconds a waiting job needs to be promoted one priority class (low -> normal -> high),
    # so low-priority jobs are never starved; 0 disables promotion.
    priority_aging: float = 30.0

    @field_validator("routing_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        parse_policy(value)  # ValueError naming the policies
        return value

    @field_validator("routing_weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        parse_weights(value)  # ValueError naming the bad weight
        return value
