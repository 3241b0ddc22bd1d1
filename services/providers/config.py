"""The provider catalog file: which instances exist, and how each one is configured.

Several instances of one adapter family may coexist ("openai" and "openrouter" are both
`openai_compatible`), each with its own base URL, key variable, models, costs and limits.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
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
    _api_key: str = field(default="", repr=False, compare=False)

    @property
    def api_key(self) -> str:
        return self._api_key

    def model_for(self, task: job_pb2.Task.ValueType, default: str = "") -> str:
        return self.models.get(task_name(task), default)

    @property
    def max_prompt_length(self) -> int:
        """Longest prompt the instance accepts (options.max_prompt_length); 0: no own limit."""
        return int(self.option_number("max_prompt_length", 0))

    def option_number(self, key: str, default: float) -> float:
        """options.<key>, `default` when unset; CatalogError unless it is a number >= 0."""
        value = self.options.get(key, default)
        # `not value >= 0` refuses NaN too.
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise CatalogError(
                f"provider {self.name!r}: options.{key} must be a number >= 0, got {value!r}"
            )
        return float(value)

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
    configs: dict[str, ProviderConfig] = {}
    for entry in data.get("providers", []):
        config = _parse(entry, env, path)
        if config.name in configs:
            raise CatalogError(f"{path}: provider {config.name!r} is declared twice")
        configs[config.name] = config
    return configs


def _parse(entry: Mapping[str, Any], env: Mapping[str, str], path: Path) -> ProviderConfig:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{path}: every provider needs a name")
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise CatalogError(f"{path}: provider {name!r} has unknown keys {sorted(unknown)}")
    for table in ("models", "cost"):
        for task in entry.get(table, {}):
            if task != "default":
                try:
                    task_from_name(task)
                except ValueError as exc:
                    raise CatalogError(f"{path}: provider {name!r} {table}: {exc}") from exc
    key_env = str(entry.get("api_key_env", ""))
    return ProviderConfig(
        name=name,
        family=str(entry.get("family", name)),
        description=str(entry.get("description", "")),
        base_url=str(entry.get("base_url", "")).rstrip("/"),
        api_key_env=key_env,
        models=dict(entry.get("models", {})),
        cost={k: float(v) for k, v in entry.get("cost", {}).items()},
        concurrency=int(entry.get("concurrency", 0)),
        rate_per_second=float(entry.get("rate_per_second", 0.0)),
        max_queue=int(entry.get("max_queue", 0)),
        timeout=float(entry.get("timeout", 60.0)),
        poll_interval=float(entry.get("poll_interval", 1.0)),
        options=dict(entry.get("options", {})),
        **_attempt_keys(entry, name, path),
        _api_key=env.get(key_env, "") if key_env else "",
    )


def _attempt_keys(entry: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    """max_retries, attempt_timeout and draft, checked."""
    out: dict[str, Any] = {}
    if "max_retries" in entry:
        retries = entry["max_retries"]
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise CatalogError(f"{path}: provider {name!r} max_retries must be an integer >= 0")
        out["max_retries"] = retries
    timeout = entry.get("attempt_timeout", 0.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise CatalogError(f"{path}: provider {name!r} attempt_timeout must be seconds >= 0")
    out["attempt_timeout"] = float(timeout)
    draft = entry.get("draft", {})
    if not isinstance(draft, dict):
        raise CatalogError(f"{path}: provider {name!r} draft must be a table of parameters")
    out["draft"] = dict(draft)
    return out
