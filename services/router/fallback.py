"""Failure handling: a job whose provider gave up on it moves to the next candidate.

The worker retries a retryable failure on its own provider (backoff, Retry-After) until its
delivery limit, then reports FAILED with kind RETRYABLE; that is where the router takes over.
"""

from __future__ import annotations

import asyncio
import logging

from genmesh.v1 import job_pb2
from services.common.parameters import dict_to_struct, struct_to_dict
from services.router import attempts
from services.router.admission import Publisher
from services.router.breakers import Breakers
from services.router.deadlines import DEADLINE_EXCEEDED, expired, mark_exceeded
from services.router.selection import Choice, LatencyTracker, Request, Selector
from services.router.store import Routed

log = logging.getLogger(__name__)

# Outcomes that say something about the provider's health, as opposed to the caller's input.
_PROVIDER_FAULTS = frozenset({job_pb2.ERROR_KIND_RETRYABLE, job_pb2.ERROR_KIND_FATAL})
DISPATCH_TRIES = 5


class Fallback:
    """Decides fallbacks inside the store's transaction; acts on them after it commits."""

    def __init__(
        self,
        selector: Selector,
        breakers: Breakers,
        latency: LatencyTracker,
        dispatcher: Publisher,
    ) -> None:
        self._selector = selector
        self._breakers = breakers
        self._latency = latency
        self._dispatcher = dispatcher

    def reroute(self, job: job_pb2.Job, failed: job_pb2.JobEvent) -> job_pb2.JobEvent | None:
        """For a FAILED event about to apply: the event to apply instead when the job moves to
        another provider (the job is updated for it), else None and the job fails.

        Only a retryable failure falls back: invalid input would fail anywhere, and a fatal
        error is the job's own (the adapter found nothing to retry)."""
        late = expired(job, failed.time)
        if failed.error.kind == job_pb2.ERROR_KIND_RETRYABLE and not late:
            choice = self.next_choice(job)
        else:
            choice = None
        if choice is None:
            attempts.close_attempt(job, failed)
            if late and failed.error.kind == job_pb2.ERROR_KIND_RETRYABLE:
                # The attempt keeps the provider's error; the job fails for lack of time.
                mark_exceeded(failed, f"no time left to fall back after {failed.error.message}")
            if len(job.attempts) > 1:
                failed.error.message += f" (tried {attempts.summary(job)})"
            return None
        source = job.provider
        note = f"falling back from {source} to {choice.provider.name}: {failed.error.message}"
        attempts.close_attempt(job, failed)
        attempts.open_attempt(job, choice.provider, note, failed.time)
        job.spec.parameters.CopyFrom(dict_to_struct(choice.parameters))
        event = job_pb2.JobEvent(state=attempts.note_state(job), provider=choice.provider.name)
        event.time.CopyFrom(failed.time)
        event.progress.message = note
        event.handed_back = True
        # Another provider starts from nothing: the failed attempt's percent no longer holds.
        event.progress.percent = 0
        return event

    def next_choice(self, job: job_pb2.Job) -> Choice | None:
        """The next candidate for a job, past every provider it has been dispatched to."""
        return self._selector.fallback(_request(job), {a.provider for a in job.attempts})

    async def settle(self, routed: Routed) -> None:
        """Feed outcomes to the breakers and latency averages; dispatch rerouted jobs."""
        for task, attempt in routed.ended:
            self.observe(task, attempt)
        for job in routed.redispatch:
            await self._dispatch(job)

    def observe(self, task: int, attempt: job_pb2.Attempt) -> None:
        if attempt.outcome == job_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
            self._breakers.succeeded(attempt.provider)
            self._latency.observe(attempt.provider, task, attempts.seconds(attempt))
        elif (
            attempt.outcome == job_pb2.ATTEMPT_OUTCOME_FAILED
            and attempt.error.kind in _PROVIDER_FAULTS
            # The job's own time ran out: no verdict on the provider.
            and attempt.error.code != DEADLINE_EXCEEDED
        ):
            self._breakers.failed(attempt.provider)
        else:
            self._breakers.released(attempt.provider)

    async def _dispatch(self, job: job_pb2.Job) -> None:
        # The job is stored as not dispatched, so should every try fail, the next router
        # start publishes it; until then, keep trying briefly.
        attempt = attempts.current(job)
        for i in range(DISPATCH_TRIES):
            try:
                await self._dispatcher.dispatch(job, attempt)
            except Exception:
                if i == DISPATCH_TRIES - 1:
                    log.exception("could not dispatch job %s attempt %d", job.id, attempt)
                    return
                await asyncio.sleep(0.2 * 2**i)
            else:
                self._breakers.dispatched(job.provider)
                return


def _request(job: job_pb2.Job) -> Request:
    # The caller's own parameters: the current ones carry the failed provider's defaults.
    source = (
        job.routing.requested_parameters
        if job.routing.HasField("requested_parameters")
        else job.spec.parameters
    )
    return Request(
        task=job.spec.task,
        parameters=struct_to_dict(source),
        provider=job.spec.provider,
        preference=job.spec.provider_preference,
        policy=job.routing.policy,
        prompt=job.spec.prompt,
    )
