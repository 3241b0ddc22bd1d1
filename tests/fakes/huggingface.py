"""A fake Hugging Face Inference API (hf-inference) on loopback.

POST /models/{model_id} with a Bearer token, as the router serves it: text-to-image models take
{"inputs", "parameters"} and answer a PNG (or JPEG, per Accept); speech recognition models take
audio bytes and answer {"text"}; text-to-speech models take {"inputs"} and answer a WAV. Errors
use the API's {"error": "..."} body: 401 for a wrong token, 404 for an unknown model, 400 for a
bad request, and 503 {"error": "Model … is currently loading", "estimated_time": N} while a
model loads (held until loaded instead when the call sends x-wait-for-model: true).

Knobs: `latency` seconds per call, `load(model, seconds)`, `faults` for scripted failures; a
client that hangs up mid-call is recorded in `abandoned`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import struct
import time
import wave
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.comfyui import render
from tests.fakes.server import Faults

TOKEN = "hf_fake_token_0123456789"
MODELS = {
    "black-forest-labs/FLUX.1-schnell": "text-to-image",
    "openai/whisper-large-v3": "automatic-speech-recognition",
    "facebook/mms-tts-eng": "text-to-speech",
}
IMAGE_PARAMETERS = {
    "negative_prompt",
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "scheduler",
}
BAD_AUDIO = (
    "Soundfile is either not in the correct format or is malformed. Ensure that the soundfile "
    "has a valid audio file extension (e.g. wav, flac or mp3) and could be decoded by ffmpeg."
)
SAMPLE_RATE = 16000


class HuggingFaceError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class FakeHuggingFace:
    """State and Starlette `app` of the fake Inference API; serve it with `serve()`."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        latency: float = 0.0,
        image_side: int = 256,
        models: Mapping[str, str] | None = None,
    ) -> None:
        self.token = token
        self.latency = latency
        # Side of the square image when a request names no size (the real models: 1024).
        self.image_side = image_side
        self.models = dict(models or MODELS)
        self.faults = Faults()
        self.abandoned: list[str] = []
        self._ready_at: dict[str, float] = {}
        self.app = Starlette(
            routes=[Route("/models/{model_id:path}", self._infer, methods=["POST"])]
        )

    def load(self, model: str, seconds: float) -> None:
        """Make `model` cold: it answers 503 "currently loading" for `seconds`."""
        self._ready_at[model] = time.monotonic() + seconds

    async def _infer(self, request: Request) -> Response:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        model = request.path_params["model_id"]
        try:
            if request.headers.get("authorization") != f"Bearer {self.token}":
                raise HuggingFaceError(401, "Invalid credentials in Authorization header")
            task = self.models.get(model)
            if task is None:
                raise HuggingFaceError(404, f"Model {model} does not exist")
            if not await self._wait_until_loaded(request, model):
                return Response(status_code=499)
            if not await self._work(request):
                return Response(status_code=499)
            if task == "text-to-image":
                return self._text_to_image(request, await _json(request))
            if task == "automatic-speech-recognition":
                return await self._transcribe(request)
            return self._speak(await _json(request))
        except HuggingFaceError as exc:
            return JSONResponse(exc.body, exc.status)

    async def _wait_until_loaded(self, request: Request, model: str) -> bool:
        remaining = self._ready_at.get(model, 0.0) - time.monotonic()
        if remaining <= 0:
            return True
        if request.headers.get("x-wait-for-model", "").lower() != "true":
            message = f"Model {model} is currently loading"
            raise HuggingFaceError(503, message, estimated_time=round(remaining, 1))
        return await self._sleep(request, remaining)

    async def _work(self, request: Request) -> bool:
        return await self._sleep(request, self.latency)

    async def _sleep(self, request: Request, seconds: float) -> bool:
        """Wait `seconds`; False (and recorded) if the client hangs up meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.02))
            if await request.is_disconnected():
                self.abandoned.append(request.url.path)
                return False
        return True

    def _text_to_image(self, request: Request, body: Mapping[str, Any]) -> Response:
        prompt = body.get("inputs")
        if not isinstance(prompt, str) or not prompt.strip():
            raise HuggingFaceError(400, "inputs must be a non-empty string")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise HuggingFaceError(400, "parameters must be an object")
        unknown = sorted(set(parameters) - IMAGE_PARAMETERS)
        if unknown:
            raise HuggingFaceError(400, f"unexpected parameters: {', '.join(unknown)}")
        width = parameters.get("width", self.image_side)
        height = parameters.get("height", self.image_side)
        for value in (width, height):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise HuggingFaceError(400, "width and height must be positive integers")
        if width % 8 or height % 8:
            raise HuggingFaceError(
                400,
                f"`height` and `width` have to be divisible by 8 but are {height} and {width}.",
            )
        picture = render(prompt, int(parameters.get("seed", 0)), width, height)
        png = "image/png" in request.headers.get("accept", "")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG" if png else "JPEG")
        return Response(buffer.getvalue(), media_type="image/png" if png else "image/jpeg")

    async def _transcribe(self, request: Request) -> Response:
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            # The JSON form: base64 audio in "inputs", with "parameters".
            body = json.loads(raw)
            raw = base64.b64decode(body.get("inputs", ""))
        try:
            with wave.open(io.BytesIO(raw)) as audio:
                seconds = audio.getnframes() / audio.getframerate()
        except (wave.Error, EOFError, struct.error, ZeroDivisionError):
            raise HuggingFaceError(400, BAD_AUDIO) from None
        return JSONResponse({"text": f" I heard {seconds:.2f} seconds of audio."})

    def _speak(self, body: Mapping[str, Any]) -> Response:
        text = body.get("inputs")
        if not isinstance(text, str) or not text.strip():
            raise HuggingFaceError(400, "inputs must be a non-empty string")
        return Response(tone(0.05 * len(text)), media_type="audio/wav")


def tone(seconds: float, frequency: float = 440.0) -> bytes:
    """A mono 16-bit WAV sine tone."""
    frames = int(seconds * SAMPLE_RATE)
    samples = (
        int(12000 * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE)) for i in range(frames)
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return buffer.getvalue()


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise HuggingFaceError(400, "request body must be JSON") from None
    if not isinstance(body, dict):
        raise HuggingFaceError(400, "request body must be a JSON object")
    return body
