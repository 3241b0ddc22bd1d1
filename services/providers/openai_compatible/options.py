"""The catalog `options` an openai_compatible instance understands, checked at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.providers.config import CatalogError

_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
_IMAGE_FORMATS = ("b64_json", "url")


@dataclass(frozen=True)
class Options:
    # OpenAI's newer models take max_completion_tokens; most compatible servers max_tokens.
    max_tokens_field: str = "max_tokens"
    # What to ask non-GPT image models for; GPT image models always answer base64.
    image_response_format: str = "b64_json"
    # Seconds between progress reports of streamed text.
    progress_interval: float = 0.5
    # Seconds a reachability probe's answer is reused (the worker asks every few seconds).
    check_ttl: float = 30.0
    # What check() GETs: /models lists models; OpenRouter's public /models does not prove
    # the key, its /key does.
    check_path: str = "/models"
    # Also report configured models missing from GET /models (local servers).
    check_models: bool = False
    # OpenRouter's app attribution: HTTP-Referer and X-Title.
    app_url: str = ""
    app_title: str = ""
    # Any further headers (OpenAI-Organization, OpenAI-Project, ...).
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any]) -> Options:
        """The options of instance `name`; CatalogError names an unknown or ill-typed one."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CatalogError(
                f"provider {name!r}: unknown options {unknown}; known: {sorted(known)}"
            )
        options = cls(
            **{k: v for k, v in raw.items() if k != "headers"}, headers=_headers(name, raw)
        )
        if options.max_tokens_field not in _TOKEN_FIELDS:
            raise CatalogError(
                f"provider {name!r}: max_tokens_field must be one of {_TOKEN_FIELDS}"
            )
        if options.image_response_format not in _IMAGE_FORMATS:
            raise CatalogError(
                f"provider {name!r}: image_response_format must be one of {_IMAGE_FORMATS}"
            )
        for number in ("progress_interval", "check_ttl"):
            value = getattr(options, number)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise CatalogError(f"provider {name!r}: {number} must be a number >= 0")
        return options

    def extra_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.app_url:
            headers["HTTP-Referer"] = self.app_url
        if self.app_title:
            headers["X-Title"] = self.app_title
        return headers


def _headers(name: str, raw: Mapping[str, Any]) -> dict[str, str]:
    headers = raw.get("headers", {})
    if not isinstance(headers, Mapping):
        raise CatalogError(
            f"provider {name!r}: options.headers must be a table of header names to values"
        )
    return {str(k): str(v) for k, v in headers.items()}
