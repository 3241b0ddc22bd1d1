"""What every configured adapter shares: its catalog entry, declared tasks and parameters,
credential check and task dispatch. A family subclasses it and writes one handler per task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.tasks import task_name
from services.providers.adapter import InvalidInput, JobContext, Result
from services.providers.config import ProviderConfig
from services.providers.params import Param, read_parameters
from services.providers.probe import CachedProbe

log = logging.getLogger(__name__)

Handler = Callable[[JobContext, Mapping[str, Any]], Awaitable[Result]]


class Closeable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=Closeable)


class ConfiguredAdapter:
    """Subclasses set `family`, `summary`, `params`, `option_keys` and fill `handlers` (task ->
    coroutine); they may set `probe` (asked by check() after the key) and `own` their HTTP
    clients."""

    family: ClassVar[str]
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    offline: ClassVar[bool] = False
    # True when a task is served only if the catalog names a model for it.
    needs_models: ClassVar[bool] = False
    # Every catalog option the family reads; any other key stops the worker at start-up.
    option_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ProviderConfig) -> None:
        config.check_options(self.option_keys)
        self.config = config
        self.handlers: dict[job_pb2.Task.ValueType, Handler] = {}
        self.probe: CachedProbe | None = None
        self._owned: list[Closeable] = []

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def tasks(self) -> list[job_pb2.Task.ValueType]:
        """Tasks this instance serves: the family's, narrowed to configured models if needed."""
        if self.needs_models or self.config.models:
            return [t for t in self.handlers if self.config.model_for(t)]
        return list(self.handlers)

    def describe(self) -> provider_service_pb2.Provider:
        tasks = self.tasks
        costs = [self.config.cost_for(t) for t in tasks] or [0.0]
        return provider_service_pb2.Provider(
            name=self.name,
            family=self.family,
            description=self.config.description or self.summary,
            tasks=tasks,
            parameters=[p.proto() for p in self.params if not p.tasks or set(p.tasks) & set(tasks)],
            offline=self.offline,
            # The dearest task, so an estimate never undersells.
            cost_per_job_usd=max(costs),
            max_prompt_length=self.config.max_prompt_length,
            limits=self.config.limits(),
        )

    def own(self, closeable: C) -> C:
        """Have aclose() close `closeable`; returns it."""
        self._owned.append(closeable)
        return closeable

    async def check(self) -> str:
        """Missing key, else the probe's cached answer when the family has one."""
        if missing := self.config.missing_key():
            return missing
        return await self.probe.reason() if self.probe is not None else ""

    async def aclose(self) -> None:
        """Release connections; the worker calls it once on shutdown."""
        # Newest first, like an exit stack: a helper built on a client goes before the client.
        for closeable in reversed(self._owned):
            await closeable.aclose()

    def model(self, task: job_pb2.Task.ValueType, default: str = "") -> str:
        model = self.config.model_for(task, default)
        if not model:
            raise InvalidInput(
                "no_model", f"{self.name} has no model configured for {task_name(task)}"
            )
        return model

    async def run(self, ctx: JobContext) -> Result:
        task = ctx.job.spec.task
        handler = self.handlers.get(task)
        if handler is None or task not in self.tasks:
            raise InvalidInput("unsupported_task", f"{self.name} does not serve {task_name(task)}")
        return await handler(ctx, read_parameters(self.params, task, ctx.parameters))


async def cancel_remote(
    what: str, cancel: Callable[[], Awaitable[Any]], within: float = 5.0
) -> None:
    """Tell the provider to stop a request after our job was cancelled; never raises.

    Call it from an `except asyncio.CancelledError:` block before re-raising: it is shielded,
    so the cancellation that got us here does not also cancel the provider call."""
    # Cancelled again, the caller stops waiting at once (and re-raises what got it here);
    # the call goes on, timed inside the shield so its bound still holds.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(_bounded(what, cancel, within))


async def _bounded(what: str, call: Callable[[], Awaitable[Any]], within: float) -> None:
    # Logs its own failure: nobody may be waiting for it any more.
    try:
        async with asyncio.timeout(within):
            await call()
    except Exception:
        log.warning("could not cancel %s at the provider", what, exc_info=True)
