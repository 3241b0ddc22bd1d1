"""A fake Google Gemini API (generativelanguage v1beta) on loopback.

POST /models/{model}:generateContent and :streamGenerateContent?alt=sse, GET /models/{model};
the key in x-goog-api-key (or ?key=). Google's error body throughout: {"error": {"code",
"message", "status", "details"}} — 400 API_KEY_INVALID for a wrong key, 403 PERMISSION_DENIED
without one, 404 NOT_FOUND for an unknown model, 400 INVALID_ARGUMENT for a malformed request.
Text models answer deterministically ("Echo: <prompt>", or a description of an input image
computed from its pixels) and stream it in word chunks; image models return a real PNG as
inlineData, shaped by imageConfig.aspectRatio.

Knobs: `latency` before answering, `chunk_delay` between streamed chunks, `image_side`,
`faults` for scripted failures, and content rules: a prompt containing a `blocked_terms` word is
blocked (promptFeedback.blockReason SAFETY), one containing an `unsafe_terms` word ends with
finishReason SAFETY / IMAGE_SAFETY, one containing a `text_only_terms` word gets no image;
`thinking_tokens` spent before a text answer count against maxOutputTokens.
A client that hangs up mid-answer is recorded in `abandoned`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.comfyui import render
from tests.fakes.server import Faults

KEY = "AIzaFakeGeminiKey0123456789"
TEXT_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro")
IMAGE_MODELS = ("gemini-2.5-flash-image",)
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
INPUT_TYPES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "tools",
    "toolConfig",
    "cachedContent",
}
NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
]


class GoogleError(Exception):
    """An error answered in Google's shape."""

    def __init__(self, code: int, status: str, message: str, *details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.body = {"error": {"code": code, "message": message, "status": status}}
        if details:
            self.body["error"]["details"] = list(details)


def invalid(message: str) -> GoogleError:
    return GoogleError(400, "INVALID_ARGUMENT", message)


class FakeGemini:
    """State and Starlette `app` of the fake Gemini API; serve it with `serve()`."""

    def __init__(
        self,
        *,
        key: str = KEY,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        image_side: int = 64,
        blocked_terms: Iterable[str] = ("forbidden",),
        unsafe_terms: Iterable[str] = ("unsafe",),
        text_only_terms: Iterable[str] = ("just chat",),
        thinking_tokens: int = 0,
    ) -> None:
        self.key = key
        self.latency = latency
        self.chunk_delay = chunk_delay
        # Longest side of generated images (the real model: 1024).
        self.image_side = image_side
        self.blocked_terms = tuple(blocked_terms)
        self.unsafe_terms = tuple(unsafe_terms)
        self.text_only_terms = tuple(text_only_terms)
        # Tokens a text model spends thinking before it answers, as Gemini 2.5 does: never
        # streamed, counted against maxOutputTokens (usageMetadata.thoughtsTokenCount).
        self.thinking_tokens = thinking_tokens
        self.faults = Faults()
        self.abandoned: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/models/{target}", self._model, methods=["GET"]),
                Route("/models/{target}", self._generate, methods=["POST"]),
            ]
        )

    # --- routes -------------------------------------------------------------------------

    async def _model(self, request: Request) -> Response:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        model = request.path_params["target"]
        try:
            self._authorise(request)
            self._known(model, "get")
        except GoogleError as exc:
            return JSONResponse(exc.body, exc.code)
        methods = ["generateContent", "streamGenerateContent", "countTokens"]
        return JSONResponse(
            {
                "name": f"models/{model}",
                "version": "001",
                "displayName": model,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": methods,
            }
        )

    async def _generate(self, request: Request) -> Response:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        model, _, method = request.path_params["target"].partition(":")
        try:
            self._authorise(request)
            if method not in ("generateContent", "streamGenerateContent"):
                raise GoogleError(404, "NOT_FOUND", f"Method {method!r} not found")
            self._known(model, method)
            body = _request_body(await request.body())
            answer = self._answer(model, body)
        except GoogleError as exc:
            return JSONResponse(exc.body, exc.code)
        if not await self._sleep(request, self.latency):
            return Response(status_code=499)
        if method == "generateContent":
            return JSONResponse(_merge(answer))
        if request.query_params.get("alt") != "sse":
            return JSONResponse([*answer])
        return StreamingResponse(self._sse(request, answer), media_type="text/event-stream")

    async def _sse(self, request: Request, chunks: list[dict[str, Any]]) -> AsyncIterator[str]:
        finished = False
        try:
            for index, chunk in enumerate(chunks):
                if index and not await self._sleep(request, self.chunk_delay):
                    return
                yield f"data: {json.dumps(chunk)}\r\n\r\n"
            finished = True
        finally:
            # Starlette cancels the stream when the client goes; that is a hang-up too.
            if not finished and request.url.path not in self.abandoned:
                self.abandoned.append(request.url.path)

    async def _sleep(self, request: Request, seconds: float) -> bool:
        """Wait `seconds`; False (and recorded) if the client hangs up meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.02))
            if await request.is_disconnected():
                if request.url.path not in self.abandoned:
                    self.abandoned.append(request.url.path)
                return False
        return True

    # --- checks -------------------------------------------------------------------------

    def _authorise(self, request: Request) -> None:
        given = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not given:
            raise GoogleError(403, "PERMISSION_DENIED", NO_KEY)
        if given != self.key:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
            raise GoogleError(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", info
            )

    def _known(self, model: str, method: str) -> None:
        if model not in TEXT_MODELS + IMAGE_MODELS:
            raise GoogleError(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version v1beta, or is not supported for "
                f"{method}. Call ListModels to see the list of available models and their "
                "supported methods.",
            )

    # --- answers ------------------------------------------------------------------------

    def _answer(self, model: str, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The response chunks (one for an image model; word chunks for text)."""
        prompt, images = _user_turn(body)
        config = body.get("generationConfig") or body.get("generation_config") or {}
        modalities = [str(m).upper() for m in config.get("responseModalities", ["TEXT"])]
        if "IMAGE" in modalities and model not in IMAGE_MODELS:
            raise invalid("Model does not support the requested response modalities: image")
        _check_range(config, "temperature", 0.0, 2.0)
        _check_range(config, "topP", 0.0, 1.0)
        meta = {"modelVersion": model, "responseId": uuid.uuid4().hex[:20]}
        usage = {"promptTokenCount": len(prompt.split()) + 258 * len(images)}
        lowered = prompt.lower()
        if any(term in lowered for term in self.blocked_terms):
            feedback = {"blockReason": "SAFETY", "safetyRatings": SAFETY_RATINGS}
            return [{"promptFeedback": feedback, "usageMetadata": usage, **meta}]
        if model in IMAGE_MODELS:
            return [self._draw(prompt, images, config, lowered, usage, meta)]
        if any(term in lowered for term in self.unsafe_terms):
            refused = {"finishReason": "SAFETY", "index": 0, "safetyRatings": SAFETY_RATINGS}
            return [{"candidates": [refused], "usageMetadata": usage, **meta}]
        return _text_chunks(_reply(prompt, images, body), config, usage, meta, self.thinking_tokens)

    def _draw(
        self,
        prompt: str,
        images: list[Image.Image],
        config: Mapping[str, Any],
        lowered: str,
        usage: dict[str, Any],
        meta: dict[str, Any],
    ) -> dict[str, Any]:
        image_config = config.get("imageConfig") or {}
        ratio = image_config.get("aspectRatio", "1:1")
        if ratio not in ASPECT_RATIOS:
            raise invalid(
                f"Unsupported aspect ratio: {ratio}. Supported: {', '.join(ASPECT_RATIOS)}"
            )
        if any(term in lowered for term in self.unsafe_terms):
            candidate = {"finishReason": "IMAGE_SAFETY", "index": 0}
            return {"candidates": [candidate], "usageMetadata": usage, **meta}
        words = {"text": "Here is the picture you asked for."}
        if any(term in lowered for term in self.text_only_terms):
            candidate = {"content": {"role": "model", "parts": [words]}, "finishReason": "STOP"}
            return {"candidates": [candidate], "usageMetadata": usage, **meta}
        if images and "imageConfig" not in config:
            width, height = images[0].size
        else:
            across, down = (int(n) for n in ratio.split(":"))
            scale = self.image_side / max(across, down)
            width, height = max(1, round(across * scale)), max(1, round(down * scale))
        picture = render(prompt, int(config.get("seed", 0)), width, height)
        if images:
            edited = images[0].convert("RGB").resize((width, height))
            picture = Image.blend(edited, picture, 0.5)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        inline = {"mimeType": "image/png", "data": base64.b64encode(buffer.getvalue()).decode()}
        parts = [words, {"inlineData": inline}]
        candidate = {
            "content": {"role": "model", "parts": parts},
            "finishReason": "STOP",
            "index": 0,
        }
        usage = {
            **usage,
            "candidatesTokenCount": 1290,
            "totalTokenCount": usage["promptTokenCount"] + 1290,
        }
        return {"candidates": [candidate], "usageMetadata": usage, **meta}


def describe(image: Image.Image) -> str:
    """What the fake "sees" in an image: its size and average colour."""
    small = image.convert("RGB").resize((1, 1), Image.Resampling.BOX)
    red, green, blue = small.getpixel((0, 0))  # type: ignore[misc]
    colour = f"#{red:02x}{green:02x}{blue:02x}"
    return f"An image of {image.width}x{image.height} pixels, on average {colour}."


def _reply(prompt: str, images: list[Image.Image], body: Mapping[str, Any]) -> str:
    system = body.get("systemInstruction") or body.get("system_instruction") or {}
    rules = " ".join(p.get("text", "") for p in system.get("parts", []) if isinstance(p, dict))
    said = " ".join(describe(image) for image in images)
    reply = f"{said} You asked: {prompt}" if images else f"Echo: {prompt}"
    return f"({rules.strip()}) {reply}" if rules.strip() else reply


def _text_chunks(
    text: str,
    config: Mapping[str, Any],
    usage: dict[str, Any],
    meta: dict[str, Any],
    thinking: int,
) -> list[dict[str, Any]]:
    words = text.split(" ")
    limit = config.get("maxOutputTokens")
    finish = "STOP"
    if isinstance(limit, int):
        thinking = min(thinking, limit)
        if len(words) > limit - thinking:
            words, finish = words[: limit - thinking], "MAX_TOKENS"
    if thinking:
        usage = {**usage, "thoughtsTokenCount": thinking}
    if not words:
        # The limit ran out while thinking: one chunk, its candidate without parts.
        spent = {**usage, "candidatesTokenCount": 0}
        spent["totalTokenCount"] = usage["promptTokenCount"] + thinking
        empty = {"content": {"role": "model"}, "finishReason": finish, "index": 0}
        return [{"candidates": [empty], "usageMetadata": spent, **meta}]
    pieces = [" ".join(words[i : i + 3]) + " " for i in range(0, len(words), 3)]
    pieces[-1] = pieces[-1].rstrip()
    chunks = []
    for index, piece in enumerate(pieces):
        candidate: dict[str, Any] = {
            "content": {"role": "model", "parts": [{"text": piece}]},
            "index": 0,
        }
        chunk = {"candidates": [candidate], **meta}
        if index == len(pieces) - 1:
            candidate["finishReason"] = finish
            total = usage["promptTokenCount"] + thinking + len(words)
            chunk["usageMetadata"] = {
                **usage,
                "candidatesTokenCount": len(words),
                "totalTokenCount": total,
            }
        chunks.append(chunk)
    return chunks


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The unary answer: the streamed chunks joined into one response."""
    if len(chunks) == 1:
        return chunks[0]
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    last = chunks[-1]
    candidate = {**last["candidates"][0], "content": {"role": "model", "parts": [{"text": text}]}}
    return {**last, "candidates": [candidate]}


def _request_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    for name in body:
        if name not in REQUEST_FIELDS:
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
            )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified\n")
    return body


def _user_turn(body: Mapping[str, Any]) -> tuple[str, list[Image.Image]]:
    """The prompt text and the decoded images of every user turn."""
    texts: list[str] = []
    images: list[Image.Image] = []
    for c, content in enumerate(body["contents"]):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise invalid(
                f"* GenerateContentRequest.contents[{c}].parts: contents.parts must not be empty.\n"
            )
        for p, part in enumerate(parts):
            inline = part.get("inline_data") or part.get("inlineData")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(inline, dict):
                images.append(_image(inline, f"contents[{c}].parts[{p}].inline_data"))
            else:
                field = f"GenerateContentRequest.contents[{c}].parts[{p}].data"
                rule = "required oneof field 'data' must have one initialized field"
                raise invalid(f"* {field}: {rule}\n")
    return " ".join(texts), images


def _image(inline: Mapping[str, Any], where: str) -> Image.Image:
    kind = inline.get("mime_type") or inline.get("mimeType")
    if kind not in INPUT_TYPES:
        raise invalid(f"Unsupported MIME type: {kind}")
    try:
        data = base64.b64decode(str(inline.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            f"Invalid value at '{where}.data' (TYPE_BYTES), Base64 decoding failed"
        ) from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError):
        raise invalid(
            "Unable to process input image. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        ) from None
    return image


def _check_range(config: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = config.get(name)
    if value is not None and not (isinstance(value, int | float) and low <= value <= high):
        raise invalid(
            f"* GenerateContentRequest.generation_config.{name}: must be in [{low}, {high}]\n"
        )
