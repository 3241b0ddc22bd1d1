"""The provider catalog file: which instances exist, and how each one is configured.

Several instances of one adapter family may coexist ("openai" and "openrouter" are both
`openai_compatible`), each with its own base URL, key variable, models, costs and limits.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genmesh.v1 import job_pb2, provider_service_pb2
from services.common.errors import CannotStart
from services.common.tasks import task_from_name, task_name

# The catalog shipped with genmesh; GENMESH_PROVIDERS_FILE points at a user's own.
DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")

_KNOWN_KEYS = {
    "name",
    "family",
    "description",
    "base_url",
    "api_key_env",
    "models",
    "cost",
    "concurrency",
    "rate_per_second",
    "max_queue",
    "timeout",
    "poll_interval",
    "options",
    "max_retries",
    "attempt_timeout",
    "draft",
}

# Options any instance may set, whatever its family: the prompt limit the router enforces.
COMMON_OPTIONS = ("max_prompt_length",)


class CatalogError(CannotStart, ValueError):
    """The catalog file is unreadable, declares something impossible (adapters raise it for
    options they refuse, naming the instance), or lacks an instance the worker is asked to
    serve: the worker cannot start, and says why in one line."""


@dataclass(frozen=True)
class ProviderConfig:
    """One provider instance. The key itself is held apart so it never reaches a repr or log."""

    name: str
    family: str
    description: str = ""
    base_url: str = ""
    # Name of the environment variable holding the key (never the key itself).
    api_key_env: str = ""
    # Model per task, keyed by task name ("text-to-image").
    models: Mapping[str, str] = field(default_factory=dict)
    # Estimated US dollars per job, keyed by task name; "default" applies to the rest.
    cost: Mapping[str, float] = field(default_factory=dict)
    # Jobs this instance runs at once in one worker; 0 means the worker's own limit.
    concurrency: int = 0
    # Jobs started per second (a token bucket in each router replica); 0 means unlimited.
    rate_per_second: float = 0.0
    # Jobs that may wait for the instance (held by the router plus queued in JetStream);
    # past it, Submit answers RESOURCE_EXHAUSTED. 0 means unbounded.
    max_queue: int = 0
    # Seconds one HTTP request may take.
    timeout: float = 60.0
    # Seconds between status polls for providers that are polled.
    poll_interval: float = 1.0
    # Family-specific settings (a ComfyUI workflow file, a RunPod endpoint id, ...).
    options: Mapping[str, Any] = field(default_factory=dict)
    # Retries of a retryable failure before the job falls back; None: the worker's own
    # GENMESH_WORKER_MAX_DELIVER - 1.
    max_retries: int | None = None
    # Seconds one attempt may take (a job's attempt_timeout overrides it); 0: no limit.
    attempt_timeout: float = 0.0
    # Parameter overrides for preview-first drafts ({ width = 256 }, { model = "..." });
    # empty: sizes and lengths cut to a quarter (services/providers/drafts.py).
    draft: Mapping[str, Any] = field(default_factory=dict)
    # The catalog file that declared the instance, named in errors about its options.
    source: Path | None = field(default=None, compare=False)
    _api_key: str = field(default="", repr=False, compare=False)

    @property
    def api_key(self) -> str:
        return self._api_key

    def model_for(self, task: job_pb2.Task.ValueType, default: str = "") -> str:
        return self.models.get(task_name(task), default)

    @property
    def max_prompt_length(self) -> int:
        """Longest prompt the instance accepts (options.max_prompt_length); 0: no own limit."""
        # Published in an int32 (Provider.max_prompt_length).
        return self.option_whole("max_prompt_length", 0, high=_INT32_MAX)

    def option_number(self, key: str, default: float) -> float:
        """options.<key>, `default` when unset; CatalogError unless it is a finite number >= 0."""
        return float(self._option(key, default))

    def option_whole(self, key: str, default: int, *, high: float = math.inf) -> int:
        """options.<key>, `default` when unset; CatalogError unless it is an integer from 0 to
        `high` (a fractional 2.5 is refused, never cut to 2)."""
        return int(self._option(key, default, integer=True, high=high))

    def option_flag(self, key: str, default: bool) -> bool:
        """options.<key>, `default` when unset; CatalogError unless it is true or false (a
        string "false" would otherwise read as true)."""
        value = self.options.get(key, default)
        if not isinstance(value, bool):
            raise self._refuse_option(key, "true or false", value)
        return value

    def option_text(
        self, key: str, default: str = "", *, choices: tuple[str, ...] = (), filled: bool = False
    ) -> str:
        """options.<key>, `default` when unset; CatalogError unless it is a string, one of
        `choices` when given, and not empty when `filled`."""
        value = self.options.get(key, default)
        if choices and value not in choices:
            raise self._refuse_option(key, f"one of {', '.join(map(repr, choices))}", value)
        if not isinstance(value, str) or (filled and not value):
            raise self._refuse_option(key, "a non-empty string" if filled else "a string", value)
        return value

    def _option(self, key: str, default: float, **bounds: Any) -> Any:
        value = self.options.get(key, default)
        if what := _out_of_range(value, **bounds):
            raise self._refuse_option(key, what, value)
        return value

    def _refuse_option(self, key: str, what: str, got: object) -> CatalogError:
        return self.refuse(f"options.{key} must be {what}, got {got!r}")

    def check_options(self, known: Iterable[str]) -> None:
        """CatalogError unless every option key is one of `known` (the family's) or common to
        all families, and the common ones are valid."""
        keys = {*known, *COMMON_OPTIONS}
        if unknown := _unknown(self.options, keys, f"{self.family} option"):
            raise self.refuse(unknown)
        # Read now, so a bad limit stops the worker before it connects rather than when it
        # first describes the instance.
        _ = self.max_prompt_length

    def refuse(self, problem: str) -> CatalogError:
        """A CatalogError naming the catalog file (when known), this instance and `problem`."""
        where = f"{self.source}: " if self.source else ""
        return CatalogError(f"{where}provider {self.name!r}: {problem}")

    def limits(self) -> provider_service_pb2.ProviderLimits:
        """The limits the instance publishes, for the router to enforce."""
        return provider_service_pb2.ProviderLimits(
            concurrency=self.concurrency,
            rate_per_second=self.rate_per_second,
            max_queue=self.max_queue,
        )

    def cost_for(self, task: job_pb2.Task.ValueType) -> float:
        return float(self.cost.get(task_name(task), self.cost.get("default", 0.0)))

    def missing_key(self) -> str:
        """Why the instance cannot authenticate, or "" when it can (or needs no key)."""
        if self.api_key_env and not self._api_key:
            return f"credentials missing: set {self.api_key_env}"
        return ""


def load_catalog(path: Path | None, env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Every instance the file declares, by name, with keys read from `env`."""
    path = path or DEFAULT_CATALOG
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read provider catalog {path}: {exc}") from exc
    # A misspelt [[provider]] would otherwise be a catalog with no instances.
    if unknown := sorted(set(data) - {"providers"}):
        raise CatalogError(f"{path}: unknown top-level keys {unknown}; instances are [[providers]]")
    entries = data.get("providers", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CatalogError(f"{path}: providers must be [[providers]] tables, one per instance")
    configs: dict[str, ProviderConfig] = {}
    for entry in entries:
        config = _parse(entry, env, path)
        if config.name in configs:
            raise CatalogError(f"{path}: provider {config.name!r} is declared twice")
        configs[config.name] = config
    return configs


# Bounds of the fields the limits are published in (ProviderLimits' int32s and a Duration).
_INT32_MAX = 2**31 - 1
_DURATION_MAX = 315_576_000_000


def _parse(entry: Mapping[str, Any], env: Mapping[str, str], path: Path) -> ProviderConfig:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{path}: every provider needs a name (a non-empty string)")
    if unknown := _unknown(entry, _KNOWN_KEYS, "key"):
        raise CatalogError(f"{path}: provider {name!r}: {unknown}")
    check = _Checked(entry, name, path)
    key_env = check.string("api_key_env")
    return ProviderConfig(
        name=name,
        family=check.string("family", name),
        description=check.string("description"),
        base_url=check.string("base_url").rstrip("/"),
        api_key_env=key_env,
        models=check.by_task("models", "a model name", lambda m: isinstance(m, str)),
        cost=check.by_task("cost", "a number >= 0", lambda c: not _out_of_range(c), float),
        concurrency=check.count("concurrency"),
        rate_per_second=check.number("rate_per_second", 0.0),
        max_queue=check.count("max_queue"),
        timeout=check.number("timeout", 60.0, positive=True),
        poll_interval=check.number("poll_interval", 1.0, positive=True),
        options=check.table("options"),
        max_retries=check.count("max_retries") if "max_retries" in entry else None,
        attempt_timeout=check.number("attempt_timeout", 0.0, high=_DURATION_MAX),
        draft=check.table("draft", "a table of parameters"),
        source=path,
        _api_key=env.get(key_env, "") if key_env else "",
    )


def _unknown(keys: Iterable[str], known: Collection[str], what: str) -> str:
    """The complaint about the keys not `known` ("unknown <what> 'x' (did you mean 'y'?);
    known: ..."), or "" when there are none."""
    unknown = sorted(set(keys) - set(known))
    if not unknown:
        return ""
    named = []
    for key in unknown:
        near = difflib.get_close_matches(key, known, n=1)
        named.append(f"{key!r} (did you mean {near[0]!r}?)" if near else repr(key))
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown {what}{plural} {', '.join(named)}; known: {', '.join(sorted(known))}"


def _out_of_range(
    value: object, *, integer: bool = False, high: float = math.inf, positive: bool = False
) -> str:
    """What a catalog number must be when `value` is not that (a finite number >= 0, > 0 when
    `positive`, an int when `integer`, at most `high`), else ""."""
    if (
        not isinstance(value, bool)
        and isinstance(value, int if integer else int | float)
        and _finite(value)
        and 0 <= value <= high
        and not (positive and value == 0)
    ):
        return ""
    what = "an integer" if integer else "a number"
    return f"{what} {f'from 0 to {high}' if high < math.inf else '> 0' if positive else '>= 0'}"


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float, which TOML does not bound
        return False


@dataclass(frozen=True)
class _Checked:
    """One instance's keys, each read checked: a CatalogError names the file, the instance,
    the key, what it must be and what it is."""

    entry: Mapping[str, Any]
    name: str
    path: Path

    def _refuse(self, key: str, what: str, got: object) -> CatalogError:
        return CatalogError(
            f"{self.path}: provider {self.name!r}: {key} must be {what}, got {got!r}"
        )

    def string(self, key: str, default: str = "") -> str:
        value = self.entry.get(key, default)
        if not isinstance(value, str):
            raise self._refuse(key, "a string", value)
        return value

    def number(self, key: str, default: float, **bounds: Any) -> float:
        value = self.entry.get(key, default)
        if what := _out_of_range(value, **bounds):
            raise self._refuse(key, what, value)
        return float(value)

    def count(self, key: str) -> int:
        """A count published in ProviderLimits (an int32); 0 when unset."""
        return int(self.number(key, 0, integer=True, high=_INT32_MAX))

    def table(self, key: str, what: str = "a table") -> dict[str, Any]:
        value = self.entry.get(key, {})
        if not isinstance(value, dict):
            raise self._refuse(key, what, value)
        return dict(value)

    def by_task(
        self, key: str, what: str, valid: Callable[[Any], bool], cast: Callable[[Any], Any] = str
    ) -> dict[str, Any]:
        """A table keyed by task name (or "default") whose values are each `what`."""
        table = self.table(key, "a table keyed by task name")
        for task, value in table.items():
            if task != "default":
                try:
                    task_from_name(task)
                except ValueError as exc:
                    raise CatalogError(
                        f"{self.path}: provider {self.name!r}: {key}: {exc}"
                    ) from None
            if not valid(value):
                raise self._refuse(f"{key}.{task}", what, value)
        return {task: cast(value) for task, value in table.items()}
