"""HTTP for adapters: one client per provider instance, every failure classified.

Adapters never see a raw httpx error: a timeout, a 429 or a 5xx becomes Retryable (with the
provider's Retry-After), a rejected request becomes InvalidInput with the provider's own
reason, and anything else Fatal. The instance's key is scrubbed from every message.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import httpx

from services.providers.adapter import Fatal, InvalidInput, ProviderError, Retryable
from services.providers.config import ProviderConfig

# Largest remote output we download into storage.
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
_MESSAGE_LIMIT = 500
_INVALID = {400, 404, 409, 413, 415, 422}
_RETRYABLE = {408, 425, 429}


def bearer(config: ProviderConfig) -> dict[str, str]:
    """`Authorization: Bearer <key>` for the instance's key; no header when it has none."""
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


class ProviderHTTP:
    """An httpx client bound to one instance's base URL, headers and timeout."""

    # Set for servers the operator runs: a refused connection then names the base URL (not a
    # secret; it says which server to go and start) followed by this hint.
    connect_hint: ClassVar[str | None] = None

    def __init__(
        self,
        config: ProviderConfig,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.config = config
        self._secrets = tuple(s for s in (config.api_key,) if s)
        self.client = httpx.AsyncClient(
            base_url=config.base_url,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout or config.timeout, connect=10.0),
            follow_redirects=True,
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_url(self) -> str:
        return self.config.base_url

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send; a non-2xx answer or a transport failure raises a classified ProviderError."""
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.is_success:
            return response
        raise self.status_error(response)

    async def json(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send and decode a JSON body; a body that is not JSON is a retryable glitch."""
        response = await self.request(method, url, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise Retryable(
                "bad_response",
                f"{self.name} answered HTTP {response.status_code} with a body that is not JSON",
            ) from None

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """A streamed response (SSE, NDJSON, large files), classified like `request`."""
        try:
            async with self.client.stream(method, url, **kwargs) as response:
                if not response.is_success:
                    await response.aread()
                    raise self.status_error(response)
                yield response
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None

    async def download(
        self, url: str, *, limit: int = MAX_DOWNLOAD_BYTES, headers: Mapping[str, str] | None = None
    ) -> tuple[bytes, str]:
        """The bytes and media type at `url` (a provider's result file), bounded by `limit`."""
        chunks: list[bytes] = []
        size = 0
        async with self.stream("GET", url, headers=headers) as response:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise Fatal("output_too_large", f"provider output exceeds {limit} bytes")
                chunks.append(chunk)
            media_type = response.headers.get("content-type", "application/octet-stream")
        return b"".join(chunks), media_type.split(";")[0].strip()

    def transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            return Retryable("timeout", f"{self.name} did not answer in time")
        if self.connect_hint is not None and isinstance(exc, httpx.ConnectError):
            where = f"{self.base_url} ({type(exc).__name__}{self.connect_hint})"
            return Retryable("unreachable", f"cannot reach {self.name} at {where}")
        return Retryable(
            "unreachable", f"cannot reach {self.name}: {self.scrub(type(exc).__name__)}"
        )

    def status_error(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        reason = self.scrub(error_message(response))
        text = f"{self.name} answered HTTP {status}" + (f": {reason}" if reason else "")
        if status in _RETRYABLE or status >= 500:
            code = "rate_limited" if status == 429 else "provider_unavailable"
            return Retryable(code, text, retry_after=retry_after(response.headers))
        if status in (401, 403):
            return Fatal("unauthorized", f"{text} (check {self.config.api_key_env or 'the key'})")
        if status == 402:
            return Fatal("payment_required", text)
        if status in _INVALID:
            return InvalidInput("rejected_by_provider", text)
        return Fatal("provider_error", text)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def error_message(response: httpx.Response) -> str:
    """The human reason in a provider's error body, in whichever shape it uses."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:_MESSAGE_LIMIT]
    return _find_message(body)[:_MESSAGE_LIMIT]


def _find_message(body: Any) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, list):
        return "; ".join(m for m in (_find_message(b) for b in body[:3]) if m)
    if not isinstance(body, dict):
        return json.dumps(body)[:_MESSAGE_LIMIT]
    for key in ("error", "detail", "message", "msg", "errors", "error_message", "title"):
        if body.get(key):
            return _find_message(body[key])
    return json.dumps(body)[:_MESSAGE_LIMIT]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms."""
    if value := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
