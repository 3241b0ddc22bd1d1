"""Choosing a provider for a job: eligible candidates, ranked by a routing policy."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.errors import InvalidArgument, Unavailable
from services.common.parameters import ParameterRules
from services.common.tasks import task_name
from services.prompt.client import check_provider_limit
from services.router.breakers import Breakers

Provider = provider_service_pb2.Provider
Policy: TypeAlias = job_pb2.RoutingPolicy.ValueType

POLICIES: dict[str, Policy] = {
    "priority": job_pb2.ROUTING_POLICY_PRIORITY,
    "cost": job_pb2.ROUTING_POLICY_COST,
    "latency": job_pb2.ROUTING_POLICY_LATENCY,
    "least_busy": job_pb2.ROUTING_POLICY_LEAST_BUSY,
    "weighted": job_pb2.ROUTING_POLICY_WEIGHTED,
}
_POLICY_NAMES = {v: k for k, v in POLICIES.items()}
_UNAVAILABLE = provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE


def parse_policy(name: str) -> Policy:
    """A policy from its setting name ("cost", "least_busy", ...)."""
    try:
        return POLICIES[name.strip().lower().replace("-", "_")]
    except KeyError:
        raise ValueError(
            f"unknown routing policy {name!r}; one of: {', '.join(POLICIES)}"
        ) from None


def parse_priority(text: str) -> tuple[str, ...]:
    """ "a,b,c" -> ("a", "b", "c")."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_weights(text: str) -> dict[str, float]:
    """ "a=3,b=1" -> {"a": 3.0, "b": 1.0}."""
    weights = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or weight < 0:
            raise ValueError(f"routing weight {item.strip()!r} is not name=non-negative number")
        weights[name.strip()] = weight
    return weights


class LatencyTracker:
    """Exponentially weighted moving average of completed attempts' durations, per
    provider and task; recent jobs count most, so a provider that speeds up is noticed."""

    def __init__(self, alpha: float = 0.3) -> None:
        self._alpha = alpha
        self._averages: dict[tuple[str, int], float] = {}

    def observe(self, provider: str, task: int, seconds: float) -> None:
        key = (provider, task)
        old = self._averages.get(key)
        self._averages[key] = seconds if old is None else old + self._alpha * (seconds - old)

    def average(self, provider: str, task: int) -> float | None:
        return self._averages.get((provider, task))


@dataclass(frozen=True)
class SelectionConfig:
    """The router's routing settings."""

    default_policy: Policy = job_pb2.ROUTING_POLICY_PRIORITY
    priority: tuple[str, ...] = ()
    weights: Mapping[str, float] = field(default_factory=dict)
    # Providers a job may be dispatched to in all, first choice included.
    max_attempts: int = 3


@dataclass(frozen=True)
class Request:
    """What selection needs to know about a job."""

    task: job_pb2.Task.ValueType
    parameters: Mapping[str, Any]
    provider: str = ""
    preference: job_pb2.ProviderPreference.ValueType = job_pb2.PROVIDER_PREFERENCE_UNSPECIFIED
    policy: Policy = job_pb2.ROUTING_POLICY_UNSPECIFIED
    # The prompt the provider will receive (after optimization), checked against its limit.
    prompt: str = ""

    @property
    def strict(self) -> bool:
        return bool(self.provider) and self.preference != job_pb2.PROVIDER_PREFERENCE_SOFT


@dataclass(frozen=True)
class Choice:
    provider: Provider
    # The job's parameters checked against the chosen provider, defaults filled in.
    parameters: dict[str, Any]
    decision: job_pb2.RoutingDecision


@dataclass
class _Candidate:
    provider: Provider
    parameters: dict[str, Any] | None = None
    # Why it cannot take the job now; "" when eligible.
    excluded: str = ""
    # Excluded only for the moment (no live worker, open circuit): a first dispatch may
    # still queue for it when nothing else can run the job.
    transient: bool = False
    note: str = ""


class Selector:
    """Ranks the providers that serve a task, accept the parameters, are healthy and whose
    circuit is closed, by the job's routing policy (or the configured default)."""

    def __init__(
        self,
        providers: Callable[[int], list[Provider]],
        config: SelectionConfig,
        breakers: Breakers,
        latency: LatencyTracker,
        rng: random.Random | None = None,
    ) -> None:
        self._providers = providers
        self._config = config
        # Position in the configured priority order, by provider name.
        self._priority = {name: i for i, name in enumerate(config.priority)}
        self._breakers = breakers
        self._latency = latency
        self._rng = rng or random.Random()
        # (provider, task) -> (the registration the rules were read from, the rules)
        self._rules: dict[tuple[str, int], tuple[Provider, ParameterRules]] = {}

    def choose(self, request: Request) -> Choice:
        """The first provider for a new job; InvalidArgument or Unavailable when none can."""
        policy = self._policy(request)
        known = self._providers(0)
        if request.provider:
            # Names are unique in the catalog: the one asked for, without a dict of all.
            named = next((p for p in known if p.name == request.provider), None)
            if named is None:
                names = _names(known) or "none"
                raise InvalidArgument(f"unknown provider {request.provider!r}; known: {names}")
            if request.strict:
                return self._strict(request, named, policy)
            if request.task not in named.tasks:
                raise InvalidArgument(
                    f"provider {request.provider!r} does not serve {task_name(request.task)}"
                )
        candidates = self._assess(request, self._providers(request.task), ())
        if not candidates:
            names = _names(known) or "none registered"
            raise Unavailable(f"no provider serves {task_name(request.task)} (providers: {names})")
        ranked = self._rank(request, policy, [c for c in candidates if not c.excluded])
        reason = _reason(policy, ranked, self._config)
        if not ranked:
            # Nothing can run it now; queue for the best that could later, as a provider
            # whose worker is restarting should not turn submits into errors.
            waiting = [c for c in candidates if c.transient]
            if not waiting:
                raise InvalidArgument(_no_candidate(request, candidates))
            ranked = self._rank(request, policy, waiting)
            reason = f"no candidate available now; queued for {ranked[0].provider.name}: " + (
                ranked[0].excluded
            )
        return self._choice(ranked[0], policy, candidates, ranked, reason)

    def check(self, request: Request) -> None:
        """InvalidArgument where choose would refuse the job as asked, for a job made later;
        no provider serving its task yet is left to then."""
        # Ranked by priority, so the weighted policy's random draws are not spent on it.
        with contextlib.suppress(Unavailable):
            self.choose(replace(request, policy=job_pb2.ROUTING_POLICY_PRIORITY))

    def fallback(self, request: Request, tried: Collection[str]) -> Choice | None:
        """The next provider after `tried` failed, or None when no eligible one is left."""
        if request.strict or len(tried) >= self._config.max_attempts:
            return None
        policy = self._policy(request)
        candidates = self._assess(request, self._providers(request.task), tried)
        ranked = self._rank(request, policy, [c for c in candidates if not c.excluded])
        if not ranked:
            return None
        return self._choice(ranked[0], policy, candidates, ranked, _reason(policy, ranked, None))

    def _validate(self, provider: Provider, request: Request) -> dict[str, Any]:
        # The catalog hands out the same message until a registration changes, so the
        # parsed rules are reused for as long as it does.
        key = (provider.name, int(request.task))
        cached = self._rules.get(key)
        if cached is None or cached[0] is not provider:
            cached = self._rules[key] = (provider, ParameterRules(provider, request.task))
        return cached[1].validate(request.parameters)

    def _policy(self, request: Request) -> Policy:
        return request.policy or self._config.default_policy

    def _strict(self, request: Request, provider: Provider, policy: Policy) -> Choice:
        if request.task not in provider.tasks:
            raise InvalidArgument(
                f"provider {provider.name!r} does not serve {task_name(request.task)}"
            )
        parameters = self._validate(provider, request)
        check_provider_limit(provider, request.prompt)
        candidate = _Candidate(provider, parameters, note="named by the caller")
        return self._choice(
            candidate, policy, [candidate], [candidate], "named by the caller (strict)"
        )

    def _assess(
        self, request: Request, providers: Sequence[Provider], tried: Collection[str]
    ) -> list[_Candidate]:
        out = []
        for provider in providers:
            candidate = _Candidate(provider)
            try:
                candidate.parameters = self._validate(provider, request)
                check_provider_limit(provider, request.prompt)
            except InvalidArgument as exc:
                candidate.excluded = exc.message
            if candidate.excluded:
                pass
            elif provider.name in tried:
                candidate.excluded = "already tried"
            elif provider.health.status == _UNAVAILABLE:
                candidate.excluded = f"unavailable: {provider.health.reason or 'unknown'}"
                candidate.transient = True
            elif not self._breakers.allows(provider.name):
                candidate.excluded = "circuit open"
                candidate.transient = True
            out.append(candidate)
        return out

    def _rank(self, request: Request, policy: Policy, pool: list[_Candidate]) -> list[_Candidate]:
        priority = self._priority

        def order(c: _Candidate) -> tuple[int, str]:
            return priority.get(c.provider.name, len(priority)), c.provider.name

        ranked = sorted(pool, key=order)
        if policy == job_pb2.ROUTING_POLICY_COST:
            ranked.sort(key=lambda c: c.provider.cost_per_job_usd)
            for c in ranked:
                c.note = c.note or f"cost ${c.provider.cost_per_job_usd:.4f}"
        elif policy == job_pb2.ROUTING_POLICY_LATENCY:
            # Unmeasured providers go first, so each one gets measured.
            def latency(c: _Candidate) -> float:
                seconds = self._latency.average(c.provider.name, request.task)
                c.note = c.note or (
                    "latency not measured yet" if seconds is None else f"latency {seconds:.3f}s"
                )
                return -1.0 if seconds is None else seconds

            ranked.sort(key=latency)
        elif policy == job_pb2.ROUTING_POLICY_LEAST_BUSY:
            ranked.sort(key=lambda c: c.provider.health.in_flight)
            for c in ranked:
                c.note = c.note or f"{c.provider.health.in_flight} in flight"
        elif policy == job_pb2.ROUTING_POLICY_WEIGHTED:
            ranked = self._weighted(ranked)
        else:
            for c in ranked:
                position = priority.get(c.provider.name)
                c.note = c.note or (
                    f"priority {position + 1}" if position is not None else "not in priority list"
                )
        if request.provider:
            # A soft preference goes first whenever it is eligible.
            ranked.sort(key=lambda c: c.provider.name != request.provider)
            for c in ranked:
                if c.provider.name == request.provider:
                    c.note = "preferred by the caller; " + c.note
        return ranked

    def _weighted(self, pool: list[_Candidate]) -> list[_Candidate]:
        # Weighted random order without replacement (Efraimidis-Spirakis keys): the first is
        # drawn in proportion to its weight, and so is each next among the rest.
        weights = self._config.weights
        keyed = []
        for c in pool:
            weight = weights.get(c.provider.name, 1.0)
            c.note = c.note or f"weight {weight:g}"
            key = self._rng.random() ** (1.0 / weight) if weight > 0 else -1.0
            keyed.append((key, c))
        keyed.sort(key=lambda kc: -kc[0])
        return [c for _, c in keyed]

    def _choice(
        self,
        chosen: _Candidate,
        policy: Policy,
        candidates: list[_Candidate],
        ranked: list[_Candidate],
        reason: str,
    ) -> Choice:
        decision = job_pb2.RoutingDecision(policy=policy, reason=reason)
        rest = [c for c in candidates if c not in ranked]
        for c in [*ranked, *rest]:
            decision.candidates.append(
                job_pb2.RoutingCandidate(
                    provider=c.provider.name,
                    eligible=not c.excluded,
                    note=c.excluded or c.note,
                    cost_usd=c.provider.cost_per_job_usd,
                )
            )
        assert chosen.parameters is not None
        return Choice(chosen.provider, chosen.parameters, decision)


def requested(spec: job_pb2.JobSpec, parameters: Mapping[str, Any], prompt: str) -> Request:
    """A selection request from a job spec, its parameters as the caller sent them and the
    prompt as the provider will receive it."""
    return Request(
        prompt=prompt,
        task=spec.task,
        parameters=parameters,
        provider=spec.provider,
        preference=spec.provider_preference,
        policy=spec.routing_policy,
    )


def _names(providers: Sequence[Provider]) -> str:
    return ", ".join(sorted({p.name for p in providers}))


def _reason(policy: Policy, ranked: list[_Candidate], config: SelectionConfig | None) -> str:
    if not ranked:
        return ""
    first = ranked[0]
    name = first.provider.name
    if first.note.startswith("preferred by the caller"):
        return f"{name} preferred by the caller (soft)"
    others = len(ranked) - 1
    if policy == job_pb2.ROUTING_POLICY_COST:
        why = f"lowest estimated cost (${first.provider.cost_per_job_usd:.4f})"
    elif policy == job_pb2.ROUTING_POLICY_LATENCY:
        why = f"lowest observed latency ({first.note})"
    elif policy == job_pb2.ROUTING_POLICY_LEAST_BUSY:
        why = f"least busy ({first.note})"
    elif policy == job_pb2.ROUTING_POLICY_WEIGHTED:
        why = f"weighted random draw ({first.note})"
    elif config is not None and config.priority:
        why = f"first in the priority order {', '.join(config.priority)} ({first.note})"
    else:
        why = f"first in priority order ({first.note})"
    policy_name = _POLICY_NAMES.get(policy, "priority")
    return f"{name}: {why}; policy {policy_name}, {others} other eligible candidate(s)"


def _no_candidate(request: Request, candidates: list[_Candidate]) -> str:
    if len(candidates) == 1:
        return candidates[0].excluded
    reasons = "; ".join(f"{c.provider.name}: {c.excluded}" for c in candidates)
    return f"no provider serving {task_name(request.task)} accepts this job ({reasons})"
