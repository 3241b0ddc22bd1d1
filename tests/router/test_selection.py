"""Selection policies and circuit breakers, on catalog entries as workers register them."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.errors import InvalidArgument, Unavailable
from services.router.breakers import CLOSED, HALF_OPEN, OPEN, Breakers
from services.router.selection import (
    LatencyTracker,
    Request,
    SelectionConfig,
    Selector,
    parse_policy,
    parse_priority,
    parse_weights,
)
from tests.router.helpers import Clock

IMAGE = job_pb2.TASK_TEXT_TO_IMAGE
SPEECH = job_pb2.TASK_TEXT_TO_SPEECH
AVAILABLE = provider_service_pb2.PROVIDER_STATUS_AVAILABLE
UNAVAILABLE = provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE


def provider(
    name: str,
    cost: float = 0.0,
    in_flight: int = 0,
    status: int = AVAILABLE,
    max_width: float = 2048,
    tasks: tuple[int, ...] = (IMAGE,),
) -> provider_service_pb2.Provider:
    p = provider_service_pb2.Provider(name=name, tasks=tasks, cost_per_job_usd=cost)  # type: ignore[arg-type]
    p.parameters.add(
        name="width",
        type=provider_service_pb2.PARAMETER_TYPE_INTEGER,
        minimum=16,
        maximum=max_width,
    )
    p.health.status = status  # type: ignore[assignment]
    p.health.in_flight = in_flight
    p.health.live_workers = 0 if status == UNAVAILABLE else 1
    return p


class World:
    """A selector over a fixed list of providers, with a controllable clock."""

    def __init__(self, providers: list[provider_service_pb2.Provider], **config: object) -> None:
        self.providers = providers
        self.clock = Clock()
        self.breakers = Breakers(threshold=2, cooldown=10.0, clock=self.clock)
        self.latency = LatencyTracker()
        self.selector = Selector(
            self.list,
            SelectionConfig(**config),  # type: ignore[arg-type]
            self.breakers,
            self.latency,
            random.Random(7),
        )

    def list(self, task: int) -> list[provider_service_pb2.Provider]:
        return [
            p for p in sorted(self.providers, key=lambda p: p.name) if not task or task in p.tasks
        ]

    def choose(self, **request: object) -> str:
        return self.selector.choose(request_for(**request)).provider.name


def request_for(**fields: object) -> Request:
    fields.setdefault("task", IMAGE)
    fields.setdefault("parameters", {})
    return Request(**fields)  # type: ignore[arg-type]


def test_priority_follows_the_configured_order_then_names() -> None:
    world = World([provider("a"), provider("b"), provider("c")], priority=("c", "a"))
    choice = world.selector.choose(request_for())
    assert choice.provider.name == "c"
    assert [c.provider for c in choice.decision.candidates] == ["c", "a", "b"]
    assert choice.decision.reason.startswith("c: first in the priority order c, a (priority 1)")
    assert World([provider("b"), provider("a")]).choose() == "a"


def test_cost_picks_the_cheapest_and_says_so() -> None:
    world = World(
        [provider("a", cost=0.04), provider("b", cost=0.01), provider("c", cost=0.02)],
        default_policy=job_pb2.ROUTING_POLICY_COST,
    )
    choice = world.selector.choose(request_for())
    assert choice.provider.name == "b"
    assert choice.decision.policy == job_pb2.ROUTING_POLICY_COST
    assert "lowest estimated cost ($0.0100)" in choice.decision.reason
    assert [(c.provider, c.cost_usd) for c in choice.decision.candidates] == [
        ("b", 0.01),
        ("c", 0.02),
        ("a", 0.04),
    ]


def test_a_request_may_choose_its_policy() -> None:
    world = World([provider("a", cost=0.04), provider("b", cost=0.01)])
    assert world.choose() == "a"
    assert world.choose(policy=job_pb2.ROUTING_POLICY_COST) == "b"


def test_latency_prefers_the_fastest_average_and_measures_new_providers_first() -> None:
    world = World(
        [provider("a"), provider("b"), provider("c")], default_policy=job_pb2.ROUTING_POLICY_LATENCY
    )
    world.latency.observe("a", IMAGE, 2.0)
    world.latency.observe("b", IMAGE, 0.5)
    assert world.choose() == "c"  # not measured yet
    world.latency.observe("c", IMAGE, 1.0)
    assert world.choose() == "b"
    # Averages are per task: b is fast at images only.
    world.latency.observe("b", IMAGE, 9.0)
    world.latency.observe("b", IMAGE, 9.0)
    assert world.latency.average("b", IMAGE) == pytest.approx(0.5 + 0.3 * 8.5 + 0.3 * (9 - 3.05))
    assert world.choose() == "c"


def test_least_busy_picks_the_fewest_in_flight() -> None:
    world = World(
        [provider("a", in_flight=7), provider("b", in_flight=2), provider("c", in_flight=5)],
        default_policy=job_pb2.ROUTING_POLICY_LEAST_BUSY,
    )
    choice = world.selector.choose(request_for())
    assert choice.provider.name == "b"
    assert "least busy (2 in flight)" in choice.decision.reason


def test_weighted_spreads_jobs_in_proportion_to_the_weights() -> None:
    world = World(
        [provider("a"), provider("b"), provider("c")],
        default_policy=job_pb2.ROUTING_POLICY_WEIGHTED,
        weights={"a": 3.0, "b": 1.0, "c": 0.0},
    )
    counts = Counter(world.choose() for _ in range(4000))
    assert set(counts) == {"a", "b"}  # weight 0 only when nothing else can
    assert counts["a"] / counts["b"] == pytest.approx(3.0, rel=0.15)


def test_candidates_must_serve_the_task_accept_the_parameters_and_be_healthy() -> None:
    world = World(
        [
            provider("a", max_width=256),
            provider("b", status=UNAVAILABLE),
            provider("c"),
            provider("d", tasks=(SPEECH,)),
        ]
    )
    choice = world.selector.choose(request_for(parameters={"width": 1024}))
    assert choice.provider.name == "c"
    assert choice.parameters == {"width": 1024}
    notes = {c.provider: (c.eligible, c.note) for c in choice.decision.candidates}
    assert notes["a"][0] is False and "width" in notes["a"][1]
    assert notes["b"] == (False, "unavailable: unknown")
    assert "d" not in notes
    # Nobody accepts the parameters: the caller's mistake, with every provider's reason.
    with pytest.raises(InvalidArgument, match="no provider serving text-to-image accepts"):
        World([provider("a", max_width=256), provider("b", max_width=512)]).choose(
            parameters={"width": 1024}
        )
    with pytest.raises(Unavailable, match="no provider serves image-to-video"):
        world.choose(task=job_pb2.TASK_IMAGE_TO_VIDEO)


def test_a_prompt_longer_than_a_provider_accepts_excludes_it() -> None:
    short = provider("a")
    short.max_prompt_length = 10
    world = World([short, provider("b")])
    choice = world.selector.choose(request_for(prompt="x" * 11))
    assert choice.provider.name == "b"
    notes = {c.provider: c.note for c in choice.decision.candidates}
    assert notes["a"] == "prompt is 11 characters; provider 'a' accepts at most 10"
    assert world.choose(prompt="x" * 10) == "a"


def test_with_no_healthy_candidate_a_new_job_still_queues_for_one() -> None:
    world = World([provider("a", status=UNAVAILABLE), provider("b", status=UNAVAILABLE)])
    choice = world.selector.choose(request_for())
    assert choice.provider.name == "a"
    assert choice.decision.reason.startswith("no candidate available now; queued for a")
    # But a fallback never moves a job to a provider that cannot run it now.
    assert world.selector.fallback(request_for(), {"x"}) is None


def test_strict_and_soft_preferences() -> None:
    world = World([provider("a"), provider("b"), provider("c")])
    strict = request_for(provider="c")
    assert world.selector.choose(strict).decision.reason == "named by the caller (strict)"
    assert world.selector.fallback(strict, {"c"}) is None
    soft = request_for(provider="c", preference=job_pb2.PROVIDER_PREFERENCE_SOFT)
    choice = world.selector.choose(soft)
    assert choice.provider.name == "c"
    assert choice.decision.reason == "c preferred by the caller (soft)"
    after = world.selector.fallback(soft, {"c"})
    assert after is not None and after.provider.name == "a"
    with pytest.raises(InvalidArgument, match="unknown provider 'zz'; known: a, b, c"):
        world.choose(provider="zz", preference=job_pb2.PROVIDER_PREFERENCE_SOFT)


def test_fallback_skips_tried_providers_and_stops_at_the_attempt_limit() -> None:
    world = World([provider("a"), provider("b"), provider("c")], max_attempts=2)
    after = world.selector.fallback(request_for(), {"a"})
    assert after is not None and after.provider.name == "b"
    notes = {c.provider: c.note for c in after.decision.candidates}
    assert notes["a"] == "already tried"
    assert world.selector.fallback(request_for(), {"a", "b"}) is None  # limit 2 reached


def test_circuit_opens_after_consecutive_failures_then_probes_and_closes() -> None:
    world = World([provider("a"), provider("b")])
    breakers, clock = world.breakers, world.clock
    breakers.failed("a")
    breakers.succeeded("a")  # a success resets the count: failures must be consecutive
    breakers.failed("a")
    assert breakers.state("a") == CLOSED and world.choose() == "a"
    breakers.failed("a")
    assert breakers.state("a") == OPEN
    choice = world.selector.choose(request_for())
    assert choice.provider.name == "b"
    assert {c.provider: c.note for c in choice.decision.candidates}["a"] == "circuit open"

    clock.now += 10.0
    assert breakers.state("a") == HALF_OPEN
    assert world.choose() == "a"
    breakers.dispatched("a")  # the probe is out: no second job until it answers
    assert world.choose() == "b"
    breakers.succeeded("a")
    assert breakers.state("a") == CLOSED and world.choose() == "a"


def test_a_failed_probe_reopens_and_a_lost_one_expires() -> None:
    world = World([provider("a")])
    breakers, clock = world.breakers, world.clock
    breakers.failed("a")
    breakers.failed("a")
    clock.now += 10.0
    breakers.dispatched("a")
    breakers.failed("a")
    assert breakers.state("a") == OPEN  # one failure in half-open state is enough
    clock.now += 10.0
    breakers.dispatched("a")
    assert not breakers.allows("a")
    clock.now += 10.0  # the probe's outcome never came back
    assert breakers.allows("a")
    breakers.released("a")
    assert breakers.allows("a") and breakers.state("a") == HALF_OPEN


def test_threshold_zero_disables_the_breaker() -> None:
    breakers = Breakers(threshold=0, cooldown=1.0)
    for _ in range(10):
        breakers.failed("a")
    assert breakers.state("a") == CLOSED


def test_settings_parse() -> None:
    assert parse_policy("least-busy") == job_pb2.ROUTING_POLICY_LEAST_BUSY
    assert parse_policy("Cost") == job_pb2.ROUTING_POLICY_COST
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        parse_policy("fastest")
    assert parse_priority(" a, b ,,c") == ("a", "b", "c")
    assert parse_weights("a=3, b=0.5") == {"a": 3.0, "b": 0.5}
    for bad in ("a", "a=x", "a=-1", "=2"):
        with pytest.raises(ValueError, match="routing weight"):
            parse_weights(bad)


def test_a_check_refuses_what_choose_would_yet_spends_no_weighted_draw() -> None:
    """Checking a job made later refuses its mistakes as choose does, and leaves the weighted
    draws of the jobs actually chosen as they would have been."""

    def world() -> World:
        return World(
            [provider("a", max_width=256), provider("b")],
            default_policy=job_pb2.ROUTING_POLICY_WEIGHTED,
        )

    checked, unchecked = world(), world()
    for _ in range(20):
        checked.selector.check(request_for())
    assert [checked.choose() for _ in range(20)] == [unchecked.choose() for _ in range(20)]
    with pytest.raises(InvalidArgument, match="unknown provider 'zz'"):
        checked.selector.check(request_for(provider="zz"))
    with pytest.raises(InvalidArgument, match="'a' does not serve text-to-speech"):
        checked.selector.check(request_for(task=SPEECH, provider="a"))
    with pytest.raises(InvalidArgument, match="parameter 'width' is 4096"):
        checked.selector.check(request_for(parameters={"width": 4096}))
    checked.selector.check(request_for(task=SPEECH))  # no provider serves it yet: left to then
