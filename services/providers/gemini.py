"""Google Gemini API (generativelanguage v1beta), key in x-goog-api-key.

Text tasks stream POST /models/{model}:streamGenerateContent?alt=sse and report the text as it
arrives; image tasks call POST /models/{model}:generateContent with responseModalities
["TEXT", "IMAGE"] and decode the inlineData parts. Input images travel inline (inline_data).
Calls are synchronous: there is no request id to record or resume, and cancelling closes the
connection. A refused prompt (promptFeedback.blockReason) or answer (a safety finishReason) is
InvalidInput naming the reason; a bad key (400 API_KEY_INVALID) is Fatal.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from genmesh.v1 import job_pb2
from services.common.tasks import task_name
from services.providers.adapter import (
    Fatal,
    InvalidInput,
    JobContext,
    Output,
    ProviderError,
    Result,
    Retryable,
)
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP
from services.providers.openai_compatible.progress import StreamedText
from services.providers.outputs import no_text
from services.providers.params import INT, NUM, STR, Param
from services.providers.probe import CachedProbe
from services.providers.remote import decode_base64, extension, sniff_media_type
from services.providers.streams import iter_sse

T2T, I2T = job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT
T2I, I2I = job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_IMAGE
TEXT_TASKS, IMAGE_TASKS = (T2T, I2T), (T2I, I2I)
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
# Image types Gemini accepts inline.
INPUT_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
# generateContent bodies are limited to 20 MB; base64 adds a third.
MAX_INLINE_BYTES = 14 * 1024 * 1024
DEFAULT_VISION_PROMPT = "Describe this image."
# Finish reasons that mean the model refused, not that something went wrong.
REFUSALS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
# The worker announces health every few seconds: probe at most this often, this fast.
PROBE_TTL = 60.0
PROBE_TIMEOUT = 5.0
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")

PARAMS: tuple[Param, ...] = (
    Param("system", STR, "System instruction sent before the prompt.", "", tasks=TEXT_TASKS),
    Param("temperature", NUM, "Sampling temperature; higher is freer.", None, 0, 2),
    Param("top_p", NUM, "Sample only from this much probability mass.", None, 0, 1),
    Param("max_output_tokens", INT, "Most tokens to generate.", None, 1, 65536, tasks=TEXT_TASKS),
    Param("seed", INT, "Reproducible sampling.", None, 0, 2**31 - 1),
    Param(
        "aspect_ratio",
        STR,
        "Shape of the generated image; unset: the model's choice (1:1, or the input's).",
        None,
        allowed=ASPECT_RATIOS,
        tasks=IMAGE_TASKS,
    ),
)
# Our parameter name -> the key in generationConfig.
_CONFIG_KEYS = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_output_tokens": "maxOutputTokens",
    "seed": "seed",
}


class GeminiHTTP(ProviderHTTP):
    """Reads Google's error body: {"error": {"code", "message", "status", "details"}}."""

    def status_error(self, response: httpx.Response) -> ProviderError:
        error = super().status_error(response)
        body = _error_body(response)
        reasons = {d.get("reason") for d in body.get("details", []) if isinstance(d, dict)}
        # Google answers a wrong key with 400 INVALID_ARGUMENT, not 401.
        if "API_KEY_INVALID" in reasons or "API key not valid" in str(body.get("message", "")):
            return Fatal("unauthorized", f"{error.message} (check {self.config.api_key_env})")
        if body.get("status") == "FAILED_PRECONDITION":
            # e.g. the API is not offered in the caller's region, or billing is off.
            return Fatal("failed_precondition", error.message)
        if isinstance(error, Retryable) and error.retry_after is None:
            error.retry_after = _retry_delay(body)
        return error


class GeminiAdapter(ConfiguredAdapter):
    """Gemini models: text and vision answers streamed, images generated and edited."""

    family = "gemini"
    option_keys = ("progress_interval",)
    summary = "Google Gemini: text, image understanding, image generation and editing."
    params = PARAMS
    needs_models = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        headers = {"x-goog-api-key": config.api_key} if config.api_key else {}
        self._http = self.own(GeminiHTTP(config, headers=headers))
        self._progress_interval = config.option_number("progress_interval", 0.5)
        self.probe = CachedProbe(self._probe_models, PROBE_TTL)
        self.handlers = {T2T: self._text, I2T: self._text, T2I: self._image, I2I: self._image}

    async def _probe_models(self) -> str:
        try:
            for model in sorted({self.model(task) for task in self.tasks}):
                await self._http.json("GET", f"/models/{model}", timeout=PROBE_TIMEOUT)
        except ProviderError as exc:
            return exc.message
        return ""

    async def _text(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        task = ctx.job.spec.task
        model = self.model(task)
        body = self._body(await _parts(ctx), p)
        if p["system"]:
            body["systemInstruction"] = {"parts": [{"text": p["system"]}]}
        streamed = StreamedText(ctx, self._progress_interval)
        finish = ""
        url = f"/models/{model}:streamGenerateContent"
        async with self._http.stream("POST", url, params={"alt": "sse"}, json=body) as response:
            async for event in iter_sse(response):
                chunk = _chunk(event.data, self.name)
                candidate = _candidate(chunk)
                for part in _content_parts(candidate):
                    if isinstance(part.get("text"), str) and not part.get("thought"):
                        streamed.add(part["text"])
                finish = str(candidate.get("finishReason") or finish)
                await streamed.report_if_due()
        if finish in REFUSALS:
            raise InvalidInput("blocked", f"{self.name} stopped answering: finishReason {finish}")
        if not streamed.text.strip() and finish == "MAX_TOKENS":
            # Gemini 2.5 counts its thinking against the limit, and may spend all of it.
            raise no_text(self.name, "max_output_tokens", p.get("max_output_tokens"))
        # Blank for any other reason: the runtime refuses it as empty_output.
        return Result(text=streamed.text)

    async def _image(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        model = self.model(ctx.job.spec.task)
        body = self._body(await _parts(ctx), p)
        config = body.setdefault("generationConfig", {})
        config["responseModalities"] = ["TEXT", "IMAGE"]
        if p["aspect_ratio"]:
            config["imageConfig"] = {"aspectRatio": p["aspect_ratio"]}
        await ctx.progress(None, f"waiting for {model}")
        answer = await self._http.json("POST", f"/models/{model}:generateContent", json=body)
        if not isinstance(answer, dict):
            raise Retryable("bad_response", f"{self.name} answered with {type(answer).__name__}")
        candidate = _candidate(answer)
        outputs: list[Output] = []
        words: list[str] = []
        for part in _content_parts(candidate):
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict) and inline.get("data") and not part.get("thought"):
                data = decode_base64(str(inline["data"]), "Gemini image")
                kind = str(inline.get("mimeType") or inline.get("mime_type") or "")
                kind = kind or sniff_media_type(data)
                outputs.append(Output(data, kind, f"image-{len(outputs) + 1}{extension(kind)}"))
            elif isinstance(part.get("text"), str):
                words.append(part["text"])
        if outputs:
            return Result(outputs)
        finish = str(candidate.get("finishReason") or "")
        said = " ".join(words).strip()[:200]
        if finish in REFUSALS:
            raise InvalidInput("blocked", f"{self.name} refused the image: finishReason {finish}")
        # NO_IMAGE / OTHER / a text-only answer: another try (or provider) may draw it.
        raise Retryable(
            "no_image", f"{self.name} returned no image (finish {finish or '?'}): {said}"
        )

    def _body(self, parts: list[dict[str, Any]], p: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}]}
        config = {key: p[name] for name, key in _CONFIG_KEYS.items() if p.get(name) is not None}
        if config:
            body["generationConfig"] = config
        return body


async def _parts(ctx: JobContext) -> list[dict[str, Any]]:
    """The user turn: the prompt, and the input image for tasks that read one."""
    task = ctx.job.spec.task
    prompt = ctx.job.spec.prompt.strip()
    if task not in (I2T, I2I):
        if not prompt:
            raise InvalidInput("missing_prompt", f"{task_name(task)} needs a prompt")
        return [{"text": prompt}]
    if task == I2I and not prompt:
        raise InvalidInput("missing_prompt", "image-to-image needs a prompt saying what to change")
    if not ctx.job.spec.input_asset_ids:
        raise InvalidInput("missing_input", f"{task_name(task)} needs one input image")
    asset, data = await ctx.read_input(0)
    media_type = asset.media_type.split(";")[0].strip() or sniff_media_type(data)
    if media_type not in INPUT_IMAGE_TYPES:
        allowed = ", ".join(INPUT_IMAGE_TYPES)
        raise InvalidInput("unsupported_input", f"input must be one of {allowed}, got {media_type}")
    if len(data) > MAX_INLINE_BYTES:
        raise InvalidInput("input_too_large", f"input image exceeds {MAX_INLINE_BYTES} bytes")
    image = {"inline_data": {"mime_type": media_type, "data": base64.b64encode(data).decode()}}
    return [image, {"text": prompt or DEFAULT_VISION_PROMPT}]


def _candidate(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first candidate, after turning a blocked prompt into InvalidInput."""
    feedback = answer.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        reason = str(feedback["blockReason"])
        flagged = [
            str(r.get("category"))
            for r in feedback.get("safetyRatings", [])
            if isinstance(r, dict) and (r.get("blocked") or r.get("probability") == "HIGH")
        ]
        detail = f" ({', '.join(flagged)})" if flagged else ""
        raise InvalidInput("blocked", f"Gemini blocked the prompt: {reason}{detail}")
    candidates = answer.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return {}


def _content_parts(candidate: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _chunk(data: str, name: str) -> Mapping[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise Retryable("bad_response", f"{name} streamed a chunk that is not JSON") from None
    if not isinstance(chunk, dict):
        raise Retryable("bad_response", f"{name} streamed a chunk that is not an object")
    error = chunk.get("error")
    if isinstance(error, dict):
        # Failures after the stream started arrive as an error object in the stream.
        message = f"{name} failed mid-answer: {error.get('status', '')} {error.get('message', '')}"
        if error.get("status") == "INVALID_ARGUMENT":
            raise InvalidInput("rejected_by_provider", message.strip())
        raise Retryable("stream_error", message.strip())
    return chunk


def _error_body(response: httpx.Response) -> Mapping[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    # Some Google front ends wrap the error in a one-element list.
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_delay(error: Mapping[str, Any]) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail ("retryDelay": "37s")."""
    for detail in error.get("details", []):
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
