"""Size limits on what a caller sends, so that every job the router stores fits each message
it must later travel in: the NATS message to its worker (1 MiB by default), and replies to
clients, which receive at most 4 MiB by default."""

from __future__ import annotations

from collections.abc import Iterable

from genmesh.v1 import job_pb2
from services.common.errors import InvalidArgument, TooLarge
from services.common.text import check_text, findable, has_control

# A spec's encoded size, leaving out its prompt (which has its own limit in characters). A
# job carries its spec and a copy of the requested parameters, so it stays well under NATS's
# default max_payload of 1 MiB.
MAX_SPEC_BYTES = 256 * 1024
# The jobs table's column width.
MAX_IDEMPOTENCY_KEY = 200
# The width of the jobs table's id and batch_id columns.
MAX_ID = 40
# A cancellation's reason, in characters: it travels in the job's events and in the message
# that stops its worker, which NATS caps at 1 MiB.
MAX_REASON = 1000
# What a reply may hold: a gRPC client's default receive limit.
MAX_REPLY_BYTES = 4 * 1024 * 1024


def check_spec(spec: job_pb2.JobSpec) -> None:
    """InvalidArgument for an idempotency key no row can hold (too long, or with control
    characters) or an enum value the contract does not define; TooLarge for a spec that,
    apart from its prompts, is over MAX_SPEC_BYTES."""
    check_text("idempotency_key", spec.idempotency_key, MAX_IDEMPOTENCY_KEY)
    # proto3 enums take any number. An undefined one was stored as sent: the bridge failed to
    # render the job (and every list holding it), and admission had no class to hold it in.
    for name, enum, defined in _ENUMS:
        value = getattr(spec, name)
        if value not in defined:
            raise InvalidArgument(f"{name} {value} is not one of {', '.join(enum.keys())}")
    # Prompts have their own limit in characters, the steps' included; a pipeline job never
    # travels to a worker whole.
    prompts = [spec.prompt, *(step.prompt for step in spec.pipeline.steps)]
    size = spec.ByteSize() - sum(len(prompt.encode()) for prompt in prompts)
    if size > MAX_SPEC_BYTES:
        raise TooLarge(
            f"the job spec is {size:,} bytes besides its prompt (largest: {_largest(spec)}); "
            f"at most {MAX_SPEC_BYTES:,}"
        )


_ENUMS = tuple(
    (name, enum, frozenset(enum.values()))
    for name, enum in (
        ("provider_preference", job_pb2.ProviderPreference),
        ("routing_policy", job_pb2.RoutingPolicy),
        ("priority", job_pb2.Priority),
    )
)


def known_id(value: str) -> bool:
    """Whether a job or batch could have id `value`; look up nothing else (see findable)."""
    return findable(value, MAX_ID)


def check_reason(reason: str) -> None:
    """InvalidArgument for a caller's cancel reason over MAX_REASON characters or with control
    characters other than tab and line breaks (PostgreSQL refuses a NUL, and an escape
    sequence would reach every terminal that shows the job's error). Checked before anything
    is recorded, and only on the public call: the router's own reasons add a short prefix to
    it (a pipeline cancelling its steps)."""
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"reason is {len(reason):,} characters; at most {MAX_REASON:,}")
    if has_control(reason, line_breaks=True):
        raise InvalidArgument("reason contains control characters (other than tab and line breaks)")


def check_reply(jobs: Iterable[job_pb2.Job], what: str) -> None:
    """TooLarge when `jobs` together would make a reply over MAX_REPLY_BYTES."""
    # Each repeated entry adds a tag and a length prefix: a few bytes, counted generously.
    size = sum(job.ByteSize() + 8 for job in jobs)
    if size > MAX_REPLY_BYTES:
        raise TooLarge(
            f"{what}'s jobs come to {size:,} bytes, over the {MAX_REPLY_BYTES:,} a reply may "
            "hold (a gRPC client's default receive limit): send fewer per call"
        )


def _largest(spec: job_pb2.JobSpec) -> str:
    names = [field.name for field, _ in spec.ListFields() if field.name != "prompt"]
    name = max(names, key=lambda n: _field_size(spec, n), default=None)
    unknown = spec.ByteSize() - _known_size(spec)
    if name is None or unknown > _field_size(spec, name):
        # Fields this version of the contract does not know (a newer client's, or junk).
        return f"unknown fields, {unknown:,} bytes"
    return f"{name}, {_field_size(spec, name):,} bytes"


def _known_size(spec: job_pb2.JobSpec) -> int:
    known = job_pb2.JobSpec()
    known.CopyFrom(spec)
    known.DiscardUnknownFields()
    return known.ByteSize()


def _field_size(spec: job_pb2.JobSpec, name: str) -> int:
    without = job_pb2.JobSpec()
    without.CopyFrom(spec)
    without.ClearField(name)  # type: ignore[arg-type]  # a name from the descriptor
    return spec.ByteSize() - without.ByteSize()
