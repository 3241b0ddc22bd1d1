"""HTTP to an OpenAI-compatible API, with the few classifications OpenAI's own errors need."""

from __future__ import annotations

from typing import Any

import httpx

from services.providers.adapter import Fatal, InvalidInput, ProviderError, Retryable
from services.providers.http import ProviderHTTP

# Error "type" values OpenAI (and servers copying it) use for requests that cannot succeed.
_INVALID_TYPES = {"invalid_request_error", "invalid_value", "BadRequestError"}
_AUTH_TYPES = {"authentication_error", "permission_error"}


class OpenAIHTTP(ProviderHTTP):
    """ProviderHTTP plus OpenAI's quirks: a 429 that is really an empty balance, and errors
    sent inside a 200 event stream."""

    # Often a server the operator runs (vLLM, LM Studio, llama.cpp): say where it should be.
    connect_hint = ""

    def status_error(self, response: httpx.Response) -> ProviderError:
        error = super().status_error(response)
        # OpenAI answers 429 both for "slow down" and for "your credit is gone"; only the
        # first gets better by waiting.
        if response.status_code == 429 and _error_code(response) == "insufficient_quota":
            return Fatal("quota_exhausted", error.message)
        return error

    def stream_error(self, error: Any) -> ProviderError:
        """Classify an {"error": ...} object that arrived inside a successful stream."""
        message = error.get("message") if isinstance(error, dict) else error
        text = f"{self.name} reported an error mid-stream: {self.scrub(str(message or error))}"
        kind = str(error.get("type")) if isinstance(error, dict) else ""
        code = error.get("code") if isinstance(error, dict) else None
        # OpenRouter puts the upstream HTTP status in "code".
        status = code if isinstance(code, int) else 0
        if kind in _AUTH_TYPES or status in (401, 403):
            return Fatal("unauthorized", text)
        if kind in _INVALID_TYPES or status in (400, 404, 413, 422):
            return InvalidInput("rejected_by_provider", text)
        return Retryable("provider_unavailable", text)


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code") or "") if isinstance(error, dict) else ""
