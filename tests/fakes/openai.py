"""A fake OpenAI API on loopback, speaking the wire format of api.openai.com/v1.

Bearer auth with OpenAI's error bodies, request validation with its messages, streamed chat
completions (SSE, `data: [DONE]`; a reasoning model's hidden tokens count against the token
limit, so a small one ends with finish_reason "length" before any text), vision content
parts, image generations and edits (real PNG/JPEG/WebP made with Pillow; base64 or URLs;
partial images streamed as SSE), speech (real WAV, raw PCM or silent MP3 frames) and
transcriptions (multipart). Latency, token pace and scripted failures
(tests.fakes.server.Faults) are configurable, so benchmarks and demos can use it as well as
tests. With `api_key=""` it needs no key, like a local vLLM or Ollama.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import math
import re
import struct
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import Faults

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "o4-mini",
    "gpt-image-1",
    "dall-e-2",
    "dall-e-3",
    "gpt-4o-mini-tts",
    "tts-1",
    "whisper-1",
)
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
IMAGE_SIZES = {
    "gpt-image": ("auto", "1024x1024", "1536x1024", "1024x1536"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
}
AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
SPEECH_RATE = 24_000
# Models that reject max_tokens and want max_completion_tokens (OpenAI's reasoning models).
_COMPLETION_TOKENS_ONLY = re.compile(r"^(o\d|gpt-5)")


class OpenAIError(Exception):
    """An error the fake answers in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, self.status)


def echo_reply(prompt: str) -> str:
    """The default chat answer: deterministic, and shows the prompt arrived intact."""
    return f"You said: {prompt}"


@dataclass
class FakeOpenAI:
    """Configure, then serve `app()` (e.g. with tests.fakes.server.serving)."""

    api_key: str = "sk-fake-openai"
    models: Sequence[str] = DEFAULT_MODELS
    # Seconds between streamed chunks (chat tokens, partial images).
    token_delay: float = 0.0
    # Seconds before answering a request that is not streamed.
    latency: float = 0.0
    # Answer image URLs even when base64 was asked for (as some compatible servers do).
    image_urls: bool = False
    # Answer chat in one JSON body even when stream=true (as some compatible servers do).
    ignore_stream: bool = False
    # Send an {"error": ...} event after this many streamed chat chunks (a failing upstream).
    fail_stream_after: int | None = None
    reply: Callable[[str], str] = echo_reply
    # Hidden reasoning tokens spent before the answer, as OpenAI's reasoning models do: never
    # streamed, counted against max_tokens / max_completion_tokens, so a limit they use up
    # leaves the answer empty with finish_reason "length".
    reasoning_tokens: int = 0
    faults: Faults = field(default_factory=Faults)
    # Every final image or audio file produced, in order.
    produced: list[bytes] = field(default_factory=list)
    # Paths of streams the client abandoned before the end (how cancellation shows here).
    abandoned: list[str] = field(default_factory=list)
    _files: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def app(self) -> Starlette:
        routes = [
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/images/generations", self._generate, methods=["POST"]),
            Route("/v1/images/edits", self._edit, methods=["POST"]),
            Route("/v1/audio/speech", self._speech, methods=["POST"]),
            Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    # --- plumbing -----------------------------------------------------------------------

    async def _guard(self, request: Request) -> Response | None:
        """Record the request, then a scripted failure or an auth failure, if any."""
        if (injected := await self.faults.check(request)) is not None:
            return injected
        if not self.api_key:
            return None
        auth = request.headers.get("authorization", "")
        if not auth:
            return OpenAIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ).response()
        key = auth.removeprefix("Bearer ").strip()
        if key != self.api_key:
            masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else "***"
            return OpenAIError(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            ).response()
        return None

    async def _json(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise OpenAIError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly.)",
            ) from None
        if not isinstance(body, dict):
            raise OpenAIError(400, "The request body must be a JSON object.")
        return body

    def _model(self, body: Any, default: str = "") -> str:
        model = body.get("model") or default
        if not model:
            raise OpenAIError(400, "you must provide a model parameter")
        if model not in self.models:
            raise OpenAIError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return str(model)

    async def _slow(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    def _sse(self, request: Request, events: AsyncIterator[str]) -> StreamingResponse:
        """Stream `events`; a client that leaves early is recorded in `abandoned`."""
        path = request.url.path

        async def body() -> AsyncIterator[str]:
            finished = False
            try:
                async for event in events:
                    if await request.is_disconnected():
                        return
                    yield event
                finished = True
            finally:
                if not finished:
                    self.abandoned.append(path)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def _pace(self) -> None:
        await asyncio.sleep(self.token_delay)

    # --- endpoints ----------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
            for m in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        try:
            body = await self._json(request)
            model = self._model(body)
            prompt = _check_chat(body, model)
        except OpenAIError as exc:
            return exc.response()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        reply = self.reply(prompt)
        if (body.get("response_format") or {}).get("type") == "json_object":
            reply = json.dumps({"reply": reply})
        pieces = re.findall(r"\S+\s*", reply)
        finish = "stop"
        reasoning = self.reasoning_tokens
        if limit is not None:
            reasoning = min(reasoning, int(limit))
            if len(pieces) > int(limit) - reasoning:
                pieces, finish = pieces[: int(limit) - reasoning], "length"
        created = int(time.time())
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if not body.get("stream") or self.ignore_stream:
            await self._slow()
            message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
            return JSONResponse(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": _usage(prompt, pieces, reasoning),
                }
            )

        def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
            return f"data: {json.dumps(payload)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for sent, piece in enumerate(pieces):
                if sent == self.fail_stream_after:
                    error = {
                        "message": "The server had an error processing your request.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                    yield f"data: {json.dumps({'error': error})}\n\n"
                    return
                await self._pace()
                yield chunk({"content": piece})
            yield chunk({}, finish)
            yield "data: [DONE]\n\n"

        return self._sse(request, events())

    async def _generate(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        try:
            body = await self._json(request)
            model = self._model(body, "dall-e-2")
            if not body.get("prompt"):
                raise _missing("prompt")
            job = _ImageJob.read(body, model)
        except OpenAIError as exc:
            return exc.response()
        return await self._images(request, job, lambda w, h: render(str(body["prompt"]), w, h))

    async def _edit(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        fields, uploads = await _form(request)
        try:
            model = self._model(fields, "dall-e-2")
            upload = uploads.get("image") or uploads.get("image[]")
            if upload is None:
                raise _missing("image")
            if not fields.get("prompt"):
                raise _missing("prompt")
            source = _open_image(upload[1])
            job = _ImageJob.read(fields, model, default_size=f"{source.width}x{source.height}")
        except OpenAIError as exc:
            return exc.response()
        prompt = fields["prompt"]
        return await self._images(request, job, lambda w, h: edit(source, prompt, w, h))

    async def _images(
        self, request: Request, job: _ImageJob, draw: Callable[[int, int], Image.Image]
    ) -> Response:
        width, height = job.dimensions
        kind = "image_edit" if request.url.path.endswith("/edits") else "image_generation"
        if job.partial_images:

            async def events() -> AsyncIterator[str]:
                for _ in range(job.n):
                    for index in range(job.partial_images):
                        await self._pace()
                        small = draw(max(8, width // 8), max(8, height // 8))
                        data = encode(small, job.output_format)
                        yield _image_event(f"{kind}.partial_image", data, partial_image_index=index)
                    await self._pace()
                    data = encode(draw(width, height), job.output_format)
                    self.produced.append(data)
                    yield _image_event(f"{kind}.completed", data)

            return self._sse(request, events())
        await self._slow()
        items = []
        for _ in range(job.n):
            data = encode(draw(width, height), job.output_format)
            self.produced.append(data)
            if job.response_format == "url" or self.image_urls:
                name = f"{uuid.uuid4().hex}.{job.output_format}"
                self._files[name] = (data, f"image/{job.output_format}")
                items.append({"url": f"{str(request.base_url).rstrip('/')}/files/{name}"})
            else:
                items.append({"b64_json": base64.b64encode(data).decode()})
        return JSONResponse({"created": int(time.time()), "data": items})

    async def _file(self, request: Request) -> Response:
        """Generated files, as a CDN serves them: no key needed, since the URL is the secret."""
        if (injected := await self.faults.check(request)) is not None:
            return injected
        found = self._files.get(request.path_params["name"])
        if found is None:
            return PlainTextResponse("Not Found", 404)
        return Response(found[0], media_type=found[1])

    async def _speech(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        try:
            body = await self._json(request)
            self._model(body)
            text = body.get("input")
            if not text:
                raise _missing("input")
            if len(text) > 4096:
                raise OpenAIError(
                    400,
                    "string too long. Expected a string with maximum length 4096, but got a "
                    f"string with length {len(text)} instead.",
                    param="input",
                    code="string_above_max_length",
                )
            voice = body.get("voice")
            if voice not in VOICES:
                raise _invalid_value("voice", voice, VOICES)
            speed = float(body.get("speed", 1.0))
            if not 0.25 <= speed <= 4.0:
                raise OpenAIError(
                    400,
                    f"Invalid 'speed': {speed} is not between 0.25 and 4.0.",
                    param="speed",
                    code="invalid_value",
                )
            fmt = body.get("response_format", "mp3")
            if fmt not in SPEECH_ENCODERS:
                raise OpenAIError(
                    400,
                    f"This fake server cannot encode {fmt!r}; it makes wav, pcm and mp3.",
                    param="response_format",
                    code="invalid_value",
                )
        except OpenAIError as exc:
            return exc.response()
        await self._slow()
        seconds = max(0.3, 0.06 * len(text)) / speed
        media_type, encoder = SPEECH_ENCODERS[fmt]
        data = encoder(seconds)
        self.produced.append(data)
        return Response(data, media_type=media_type)

    async def _transcribe(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        fields, uploads = await _form(request)
        try:
            self._model(fields)
            upload = uploads.get("file")
            if upload is None:
                raise _missing("file")
            extension = upload[0].rsplit(".", 1)[-1].lower()
            if extension not in AUDIO_EXTENSIONS:
                raise OpenAIError(
                    400,
                    f"Invalid file format. Supported formats: {list(AUDIO_EXTENSIONS)}",
                    param="file",
                    code="invalid_value",
                )
            data = upload[1]
        except OpenAIError as exc:
            return exc.response()
        await self._slow()
        text = describe_audio(data)
        if fields.get("response_format") == "text":
            return PlainTextResponse(text + "\n")
        return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": 1}})


async def _form(request: Request) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """A multipart body's text fields, and its files as (filename, bytes)."""
    async with request.form() as form:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        uploads = {
            k: (v.filename or "", await v.read())
            for k, v in form.items()
            if isinstance(v, UploadFile)
        }
    return fields, uploads


# --- validation -----------------------------------------------------------------------------


def _missing(name: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"Missing required parameter: '{name}'.",
        param=name,
        code="missing_required_parameter",
    )


def _invalid_value(name: str, value: Any, allowed: Sequence[str]) -> OpenAIError:
    listed = ", ".join(f"'{a}'" for a in allowed)
    return OpenAIError(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=name,
        code="invalid_value",
    )


def _check_chat(body: dict[str, Any], model: str) -> str:
    """The user's prompt (text, or a description of the image parts) after validation."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "[] is too short - 'messages'", param="messages")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= float(temperature) <= 2:
        raise OpenAIError(
            400,
            f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but "
            f"got {temperature} instead.",
            param="temperature",
            code="decimal_above_max_value",
        )
    if "max_tokens" in body and _COMPLETION_TOKENS_ONLY.match(model):
        raise OpenAIError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    if (body.get("response_format") or {}).get("type") == "json_object" and "json" not in (
        json.dumps(messages).lower()
    ):
        raise OpenAIError(
            400,
            "'messages' must contain the word 'json' in some form, to use 'response_format' "
            "of type 'json_object'.",
            param="messages",
        )
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(400, "Invalid 'messages[0].content'.", param="messages")
    parts = []
    for part in content:
        if part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            parts.append(describe_image(_data_url(part.get("image_url", {}).get("url", ""))))
    return " ".join(parts)


def _data_url(url: str) -> bytes:
    match = re.match(r"data:(image/[\w.+-]+);base64,(.*)", url, re.S)
    try:
        if match is None:
            raise ValueError(url[:30])
        return base64.b64decode(match.group(2), validate=True)
    except (ValueError, binascii.Error):
        raise OpenAIError(
            400,
            "You uploaded an unsupported image. Please make sure your image is valid.",
            param="url",
            code="invalid_image_format",
        ) from None


@dataclass
class _ImageJob:
    n: int
    dimensions: tuple[int, int]
    output_format: str
    response_format: str
    partial_images: int

    @classmethod
    def read(cls, body: dict[str, Any], model: str, default_size: str = "1024x1024") -> _ImageJob:
        family = next((f for f in IMAGE_SIZES if model.startswith(f)), "dall-e-2")
        gpt = family == "gpt-image"
        size = str(body.get("size") or ("auto" if gpt else "1024x1024"))
        if size not in IMAGE_SIZES[family]:
            raise _invalid_value("size", size, IMAGE_SIZES[family])
        n = int(body.get("n") or 1)
        if family == "dall-e-3" and n != 1:
            raise OpenAIError(400, "Invalid 'n': dall-e-3 only supports n=1.", param="n")
        if gpt and "response_format" in body:
            raise OpenAIError(
                400,
                "Unknown parameter: 'response_format'.",
                param="response_format",
                code="unknown_parameter",
            )
        partial = int(body.get("partial_images") or 0) if _true(body.get("stream")) else 0
        if partial and not gpt:
            raise OpenAIError(400, f"Streaming is not supported for {model}.", param="stream")
        fmt = str(body.get("output_format") or "png")
        if fmt not in ("png", "jpeg", "webp"):
            raise _invalid_value("output_format", fmt, ("png", "jpeg", "webp"))
        if size == "auto":
            size = default_size if "x" in default_size else "1024x1024"
        width, height = (int(v) for v in size.split("x"))
        return cls(n, (width, height), fmt, str(body.get("response_format") or "url"), partial)


def _true(value: Any) -> bool:
    return value is True or value == "true"


def _open_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError):
        raise OpenAIError(
            400,
            "Invalid input image - format must be in ['image/jpeg', 'image/png', 'image/webp'].",
            param="image",
            code="invalid_image_format",
        ) from None
    return image.convert("RGB")


# --- media ----------------------------------------------------------------------------------


def colour(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def render(prompt: str, width: int, height: int) -> Image.Image:
    """A picture that depends only on the prompt and size: its colour, crossed diagonally."""
    image = Image.new("RGB", (width, height), colour(prompt))
    ImageDraw.Draw(image).line((0, 0, width, height), fill=(255, 255, 255), width=3)
    return image


def edit(source: Image.Image, prompt: str, width: int, height: int) -> Image.Image:
    """The source resized and tinted with the prompt's colour."""
    resized = source.resize((width, height))
    return Image.blend(resized, Image.new("RGB", (width, height), colour(prompt)), 0.5)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, {"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    return buffer.getvalue()


def describe_image(data: bytes) -> str:
    image = _open_image(data)
    r, g, b = image.resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
    return f"a {image.width}x{image.height} image averaging rgb({r}, {g}, {b})"


def describe_audio(data: bytes) -> str:
    """A transcript that proves which bytes arrived: a WAV's length, else its size."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            seconds = w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        return f"An audio recording of {len(data)} bytes."
    return f"A {seconds:.2f} second recording."


def _image_event(kind: str, data: bytes, **extra: Any) -> str:
    payload = {"type": kind, "b64_json": base64.b64encode(data).decode(), **extra}
    payload.update(created_at=int(time.time()), background="opaque", quality="auto")
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"


def _usage(prompt: str, pieces: Sequence[str], reasoning: int) -> dict[str, Any]:
    prompt_tokens = len(prompt.split())
    completion = len(pieces) + reasoning
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def tone(seconds: float) -> list[int]:
    """A 440 Hz tone as 16-bit samples at SPEECH_RATE."""
    count = int(seconds * SPEECH_RATE)
    return [int(8000 * math.sin(2 * math.pi * 440 * i / SPEECH_RATE)) for i in range(count)]


def pcm(seconds: float) -> bytes:
    samples = tone(seconds)
    return struct.pack(f"<{len(samples)}h", *samples)


def wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SPEECH_RATE)
        w.writeframes(pcm(seconds))
    return buffer.getvalue()


def mp3(seconds: float) -> bytes:
    """Silent MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, mono): valid, decodable MP3."""
    header = bytes((0xFF, 0xFB, 0x90, 0xC0))
    frame = header + bytes(417 - len(header))
    return frame * max(1, math.ceil(seconds * 44_100 / 1152))


SPEECH_ENCODERS: dict[str, tuple[str, Callable[[float], bytes]]] = {
    "wav": ("audio/wav", wav),
    "pcm": ("audio/pcm", pcm),
    "mp3": ("audio/mpeg", mp3),
}
