"""Ollama's native API: streamed NDJSON chat for text and vision models (images as base64),
model presence from /api/tags.

Generation is synchronous, so there is no request id to record or resume: a redelivered job
asks again. Cancelling closes the stream, and Ollama stops generating when its client goes.
A key is only needed for a remote Ollama (ollama.com); a local server takes none."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, JobContext, ProviderError, Result, Retryable
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP, bearer
from services.providers.openai_compatible.progress import StreamedText
from services.providers.outputs import no_text
from services.providers.params import INT, NUM, STR, Param
from services.providers.probe import CachedProbe
from services.providers.streams import iter_ndjson

TEXT, VISION = job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT
DEFAULT_VISION_PROMPT = "Describe this image."
# Seconds the /api/tags probe may take; the worker's health announcements wait on it.
PROBE_TIMEOUT = 5.0

PARAMS: tuple[Param, ...] = (
    Param("system", STR, "System message sent before the prompt.", ""),
    Param("temperature", NUM, "Sampling temperature; higher is freer.", None, 0, 2),
    Param("top_p", NUM, "Sample only from this much probability mass.", None, 0, 1),
    Param("top_k", INT, "Sample only from this many likeliest tokens.", None, 1, 1000),
    Param("max_tokens", INT, "Most tokens to generate (Ollama's num_predict).", None, 1, 1_000_000),
    Param("seed", INT, "Reproducible sampling.", None, 0, 2**31 - 1),
    Param("num_ctx", INT, "Context window in tokens.", None, 256, 1_048_576),
    Param("format", STR, "json: answer with a JSON value.", "text", allowed=("text", "json")),
)
# Our parameter name -> the key in Ollama's "options".
_OPTION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "max_tokens": "num_predict",
    "seed": "seed",
    "num_ctx": "num_ctx",
}


@dataclass(frozen=True)
class OllamaOptions:
    # Seconds between progress reports of streamed text.
    progress_interval: float = 0.5
    # Seconds a /api/tags answer is reused (the worker asks every few seconds).
    check_ttl: float = 15.0
    # How long Ollama keeps the model loaded after a job: a duration ("5m", "1h"), or seconds
    # (3600; a negative number keeps it loaded); empty: its default.
    keep_alive: str | float = ""

    @classmethod
    def parse(cls, config: ProviderConfig) -> OllamaOptions:
        """The instance's options (unknown keys are refused by the adapter, before this);
        CatalogError names an ill-typed one."""
        return cls(
            progress_interval=config.option_number("progress_interval", cls.progress_interval),
            check_ttl=config.option_number("check_ttl", cls.check_ttl),
            keep_alive=_keep_alive(config),
        )


def _keep_alive(config: ProviderConfig) -> str | float:
    """options.keep_alive: Ollama takes a duration string or a number of seconds."""
    value = config.options.get("keep_alive")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return config.option_text("keep_alive", OllamaOptions.keep_alive)  # type: ignore[arg-type]


class OllamaHTTP(ProviderHTTP):
    """Ollama says 404 for a model that is not pulled: the operator must act, not the caller."""

    connect_hint = "; is `ollama serve` running?"

    def status_error(self, response: httpx.Response) -> ProviderError:
        error = super().status_error(response)
        if response.status_code == 404:
            return Fatal("model_not_pulled", error.message)
        return error


class OllamaAdapter(ConfiguredAdapter):
    family: ClassVar[str] = "ollama"
    summary: ClassVar[str] = "A local Ollama server through its native API: chat and vision."
    params: ClassVar[tuple[Param, ...]] = PARAMS
    needs_models: ClassVar[bool] = True
    option_keys: ClassVar[tuple[str, ...]] = tuple(OllamaOptions.__dataclass_fields__)

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.options = OllamaOptions.parse(config)
        self._http = self.own(OllamaHTTP(config, headers=bearer(config)))
        self.probe = CachedProbe(self._probe_tags, self.options.check_ttl)
        self.handlers = {TEXT: self._text, VISION: self._vision}

    async def _probe_tags(self) -> str:
        try:
            body = await self._http.json("GET", "/api/tags", timeout=PROBE_TIMEOUT)
        except ProviderError as exc:
            return exc.message
        entries = body.get("models") if isinstance(body, dict) else None
        pulled: set[str] = set()
        for entry in entries or []:
            if isinstance(entry, dict):
                pulled.update(str(entry.get(k)) for k in ("name", "model") if entry.get(k))
        missing = sorted(m for m in set(self.config.models.values()) if not _pulled(m, pulled))
        if not missing:
            return ""
        noun = "model" if len(missing) == 1 else "models"
        pulls = "; ".join(f"ollama pull {m}" for m in missing)
        return f"{noun} {', '.join(missing)} not pulled (run: {pulls})"

    async def _text(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        message = {"role": "user", "content": ctx.job.spec.prompt}
        return await self._chat(ctx, self.model(TEXT), message, params)

    async def _vision(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        _, data = await ctx.read_input(0)
        message = {
            "role": "user",
            "content": ctx.job.spec.prompt or DEFAULT_VISION_PROMPT,
            "images": [base64.b64encode(data).decode()],
        }
        return await self._chat(ctx, self.model(VISION), message, params)

    async def _chat(
        self, ctx: JobContext, model: str, message: dict[str, Any], params: Mapping[str, Any]
    ) -> Result:
        """POST /api/chat, streamed; the text so far is reported as progress."""
        system = [{"role": "system", "content": params["system"]}] if params["system"] else []
        body: dict[str, Any] = {"model": model, "messages": [*system, message], "stream": True}
        options = {
            key: params[name] for name, key in _OPTION_KEYS.items() if params.get(name) is not None
        }
        if options:
            body["options"] = options
        if params["format"] == "json":
            body["format"] = "json"
        if self.options.keep_alive:
            body["keep_alive"] = self.options.keep_alive
        text = StreamedText(ctx, self.options.progress_interval)
        done: dict[str, Any] | None = None
        async with self._http.stream("POST", "/api/chat", json=body) as response:
            async for line in iter_ndjson(response):
                if not isinstance(line, dict):
                    raise Retryable("bad_response", f"{self.name} streamed an unexpected line")
                if "error" in line:
                    # Mid-stream failures keep the 200 status: the model runner broke.
                    reason = self._http.scrub(str(line["error"]))
                    raise Retryable("provider_error", f"{self.name} failed mid-stream: {reason}")
                if piece := (line.get("message") or {}).get("content"):
                    text.add(str(piece))
                if line.get("done"):
                    done = line
                    break
                await text.report_if_due()
        if done is None:
            raise Retryable("stream_interrupted", f"{self.name} ended the stream before finishing")
        if not text.text.strip() and done.get("done_reason") == "length":
            # num_predict ran out first, often all of it on a thinking model's "thinking".
            raise no_text(self.name, "max_tokens", params.get("max_tokens"))
        return Result(text=text.text)


def _pulled(model: str, pulled: set[str]) -> bool:
    # "llama3.2" means "llama3.2:latest"; Ollama lists the tag.
    return model in pulled or (":" not in model and f"{model}:latest" in pulled)
