"""The catalog `options` an openai_compatible instance understands, checked at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.providers.config import ProviderConfig

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
    def parse(cls, config: ProviderConfig) -> Options:
        """The instance's options (unknown keys are refused by the adapter, before this);
        CatalogError names an ill-typed one."""
        return cls(
            max_tokens_field=config.option_text(
                "max_tokens_field", cls.max_tokens_field, choices=_TOKEN_FIELDS
            ),
            image_response_format=config.option_text(
                "image_response_format", cls.image_response_format, choices=_IMAGE_FORMATS
            ),
            progress_interval=config.option_number("progress_interval", cls.progress_interval),
            check_ttl=config.option_number("check_ttl", cls.check_ttl),
            check_path=config.option_text("check_path", cls.check_path, filled=True),
            check_models=config.option_flag("check_models", cls.check_models),
            app_url=config.option_text("app_url", cls.app_url),
            app_title=config.option_text("app_title", cls.app_title),
            headers=_headers(config),
        )

    def extra_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.app_url:
            headers["HTTP-Referer"] = self.app_url
        if self.app_title:
            headers["X-Title"] = self.app_title
        return headers


def _headers(config: ProviderConfig) -> dict[str, str]:
    headers = config.options.get("headers", {})
    if not isinstance(headers, Mapping):
        raise config.refuse("options.headers must be a table of header names to values")
    return {str(k): str(v) for k, v in headers.items()}


# Every option an openai_compatible instance reads.
OPTION_KEYS = tuple(Options.__dataclass_fields__)
