"""A fake Ollama server on loopback, speaking its native API (github.com/ollama/ollama docs/api.md).

/api/tags lists the pulled models; /api/chat and /api/generate stream NDJSON (or answer one
object with "stream": false), take base64 `images`, honour options.num_predict (a thinking
model's "thinking" counts against it, so a small limit ends with done_reason "length" before
any text), report a model that is not pulled as 404 {"error": "model \"x\" not found, try
pulling it first"}, and fail mid-stream the way Ollama does: a final {"error": "..."} line
under a 200 status. Optional Bearer auth mimics a remote Ollama (ollama.com). Latency, token
pace and scripted failures (tests.fakes.server.Faults) are configurable for benchmarks and
demos too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import Faults

DEFAULT_MODELS = ("llama3.2:latest", "llava:latest")
VERSION = "0.12.6"
ROLES = ("system", "user", "assistant", "tool")
RUNNER_ERROR = "an error was encountered while running the model"


class OllamaError(Exception):
    """An error the fake answers in Ollama's shape: {"error": "..."}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self)}, self.status)


def echo_reply(prompt: str) -> str:
    """The default answer: deterministic, and shows the prompt arrived intact."""
    return f"You said: {prompt}"


@dataclass
class FakeOllama:
    """Configure, then serve `app()` (e.g. with tests.fakes.server.serving)."""

    models: Sequence[str] = DEFAULT_MODELS
    # Empty: no auth, like a local server; set: Bearer auth, like ollama.com.
    api_key: str = ""
    # Seconds before the first chunk (loading the model into memory).
    load_delay: float = 0.0
    # Seconds between streamed chunks.
    token_delay: float = 0.0
    # Send {"error": ...} after this many streamed chunks (a crashing model runner).
    fail_stream_after: int | None = None
    reply: Callable[[str], str] = echo_reply
    # Tokens a thinking model (qwen3, gpt-oss, ...) spends thinking before its answer:
    # streamed first as message.thinking (top-level "thinking" for /api/generate) and counted
    # against options.num_predict, so a small limit ends with done_reason "length" and no text.
    thinking_tokens: int = 0
    faults: Faults = field(default_factory=Faults)
    # Paths of streams the client abandoned before the end (how cancellation shows here).
    abandoned: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/tags", self._tags, methods=["GET"]),
                Route("/api/version", self._version, methods=["GET"]),
                Route("/api/chat", self._chat, methods=["POST"]),
                Route("/api/generate", self._generate, methods=["POST"]),
            ]
        )

    async def _guard(self, request: Request) -> Response | None:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": "unauthorized"}, 401)
        return None

    async def _tags(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 2_019_393_189,
                "digest": hashlib.sha256(name.encode()).hexdigest(),
                "details": {"format": "gguf", "family": name.split(":")[0]},
            }
            for name in self.models
        ]
        return JSONResponse({"models": models})

    async def _version(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        return JSONResponse({"version": VERSION})

    async def _chat(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        try:
            body = await _json(request)
            model = self._model(body)
            messages = body.get("messages") or []
            if not isinstance(messages, list):
                raise OllamaError(400, "messages must be a list")
            prompt = _chat_prompt(messages)
        except OllamaError as exc:
            return exc.response()
        if not messages:
            return JSONResponse(_final(model, {"message": _assistant("")}, 0, "load"))
        return await self._answer(request, body, model, prompt, "message")

    async def _generate(self, request: Request) -> Response:
        if (failure := await self._guard(request)) is not None:
            return failure
        try:
            body = await _json(request)
            model = self._model(body)
            images = body.get("images") or []
            prompt = " ".join([str(body.get("prompt") or ""), *map(_describe, images)]).strip()
        except OllamaError as exc:
            return exc.response()
        if not prompt:
            return JSONResponse(_final(model, {"response": ""}, 0, "load"))
        return await self._answer(request, body, model, prompt, "response")

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not model:
            raise OllamaError(400, "model is required")
        name = str(model) if ":" in str(model) else f"{model}:latest"
        if name not in self.models:
            raise OllamaError(404, f'model "{model}" not found, try pulling it first')
        return str(model)

    async def _answer(
        self, request: Request, body: dict[str, Any], model: str, prompt: str, key: str
    ) -> Response:
        pieces = re.findall(r"\S+\s*", self.reply(prompt))
        thoughts = ["Let me think. "] * self.thinking_tokens
        reason = "stop"
        limit = (body.get("options") or {}).get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(thoughts) + len(pieces):
            thoughts = thoughts[:limit]
            pieces, reason = pieces[: limit - len(thoughts)], "length"
        tokens = len(thoughts) + len(pieces)

        def part(text: str, thinking: str = "") -> dict[str, Any]:
            said: dict[str, Any] = {"thinking": thinking} if thinking else {}
            if key == "message":
                return {"message": {**_assistant(text), **said}}
            return {"response": text, **said}

        if body.get("stream") is False:
            await asyncio.sleep(self.load_delay)
            whole = part("".join(pieces), "".join(thoughts))
            return JSONResponse(_final(model, whole, tokens, reason))
        chunks = [part("", t) for t in thoughts] + [part(p) for p in pieces]
        path = request.url.path

        async def lines() -> AsyncIterator[str]:
            finished = False
            try:
                await asyncio.sleep(self.load_delay)
                for sent, chunk in enumerate(chunks):
                    if sent == self.fail_stream_after:
                        yield json.dumps({"error": RUNNER_ERROR}) + "\n"
                        finished = True
                        return
                    await asyncio.sleep(self.token_delay)
                    if await request.is_disconnected():
                        return
                    line = {"model": model, "created_at": _now(), **chunk, "done": False}
                    yield json.dumps(line) + "\n"
                yield json.dumps(_final(model, part(""), tokens, reason)) + "\n"
                finished = True
            finally:
                if not finished:
                    self.abandoned.append(path)

        return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise OllamaError(400, "missing request body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise OllamaError(400, f"invalid character in request body: {exc}") from None
    if not isinstance(body, dict):
        raise OllamaError(400, "json: cannot unmarshal into Go value of type api.ChatRequest")
    return body


def _chat_prompt(messages: list[Any]) -> str:
    """The last message's text followed by a description of each image it carries."""
    if not messages:
        return ""
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") not in ROLES:
        raise OllamaError(400, "invalid message role")
    images = last.get("images") or []
    return " ".join([str(last.get("content") or ""), *map(_describe, images)]).strip()


def _describe(b64: Any) -> str:
    """What the fake "sees": the decoded image's size and average colour."""
    try:
        data = base64.b64decode(str(b64), validate=True)
    except (binascii.Error, ValueError):
        raise OllamaError(400, "illegal base64 data at input byte 0") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError):
        raise OllamaError(500, "failed to process inputs: image: unknown format") from None
    r, g, b = image.convert("RGB").resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
    return f"a {image.width}x{image.height} image averaging rgb({r}, {g}, {b})"


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _final(model: str, part: dict[str, Any], tokens: int, reason: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _now(),
        **part,
        "done_reason": reason,
        "done": True,
        "total_duration": 1_000_000 * (tokens + 1),
        "load_duration": 1_000_000,
        "prompt_eval_count": 8,
        "prompt_eval_duration": 1_000_000,
        "eval_count": tokens,
        "eval_duration": 1_000_000 * tokens,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
