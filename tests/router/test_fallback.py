"""Fallback between the store, the selector and the dispatcher, on a real database and a
real JetStream: the next attempt is recorded and published once, a superseded attempt's
late events change nothing, and a router dying before it dispatched still sends it."""

from __future__ import annotations

from genmesh.v1 import bus_pb2, job_pb2, provider_service_pb2
from tests.router.helpers import IMAGE, World, created, worker_event


async def test_retryable_failure_moves_the_job_and_late_events_are_dropped(world: World) -> None:
    store = world.store
    await created(store)
    await store.apply([worker_event(job_pb2.JOB_STATE_PROCESSING, 1, attempt=1)])

    routed = await store.apply_routed(
        [worker_event(job_pb2.JOB_STATE_FAILED, 2, 1, job_pb2.ERROR_KIND_RETRYABLE)],
        world.fallback.reroute,
    )
    [event] = routed.events
    assert event.state == job_pb2.JOB_STATE_PROCESSING
    assert event.provider == "b"
    assert event.progress.message == "falling back from a to b: HTTP 503 from a"
    assert event.handed_back  # watchers keep showing why while b starts
    # Watchers see progress start over, not the failed attempt's last percent.
    assert event.progress.HasField("percent") and event.progress.percent == 0
    [(task, ended)] = routed.ended
    assert (task, ended.provider, ended.outcome) == (IMAGE, "a", job_pb2.ATTEMPT_OUTCOME_FAILED)
    [moved] = routed.redispatch
    assert [(a.attempt, a.provider, a.cost_usd) for a in moved.attempts] == [
        (1, "a", 0.01),
        (2, "b", 0.02),
    ]
    # Stored undispatched first: a router dying now publishes it at its next start.
    assert [j.id for j in await store.undispatched()] == [moved.id]
    await world.dispatcher.redispatch_pending()
    await world.fallback.settle(routed)  # the same attempt again: JetStream drops the repeat
    info = await world.js.stream_info(world.bus.jobs_stream)
    assert info.state.messages == 1
    msg = await world.js.get_last_msg(world.bus.jobs_stream, world.bus.jobs_subject("b"))
    assert msg.data is not None
    dispatch = bus_pb2.JobDispatch.FromString(msg.data)
    assert (dispatch.attempt, dispatch.job.provider) == (2, "b")
    assert world.breakers.state("a") == provider_service_pb2.CIRCUIT_STATE_CLOSED  # 1 of 2

    # The first attempt's worker is late with news; none of it applies.
    late = await store.apply(
        [
            worker_event(job_pb2.JOB_STATE_PROCESSING, 3, attempt=1),
            worker_event(job_pb2.JOB_STATE_COMPLETED, 4, attempt=1),
        ]
    )
    assert late == []
    routed = await store.apply_routed(
        [worker_event(job_pb2.JOB_STATE_COMPLETED, 5, attempt=2)], world.fallback.reroute
    )
    await world.fallback.settle(routed)
    job = await store.get("t", "j_fallback")
    assert job is not None
    assert (job.state, job.provider) == (job_pb2.JOB_STATE_COMPLETED, "b")
    assert [a.outcome for a in job.attempts] == [
        job_pb2.ATTEMPT_OUTCOME_FAILED,
        job_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    ]
    assert world.latency.average("b", IMAGE) is not None


async def test_a_fatal_or_invalid_failure_ends_the_job_where_it_is(world: World) -> None:
    store = world.store
    await created(store)
    routed = await store.apply_routed(
        [worker_event(job_pb2.JOB_STATE_FAILED, 1, 1, job_pb2.ERROR_KIND_INVALID_INPUT)],
        world.fallback.reroute,
    )
    assert routed.redispatch == []
    [event] = routed.events
    assert event.state == job_pb2.JOB_STATE_FAILED
    assert event.error.message == "HTTP 503 from a"  # one attempt: no list appended
    await world.fallback.settle(routed)
    # The caller's invalid input says nothing about the provider's health.
    world.breakers.failed("a")
    assert world.breakers.state("a") == provider_service_pb2.CIRCUIT_STATE_CLOSED
