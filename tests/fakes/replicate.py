"""Replicate's predictions API on loopback, for tests, benchmarks and the demo mode.

Serves what api.replicate.com/v1 documents, under /v1: POST /models/{owner}/{name}/predictions
(official models) and POST /predictions {"version", "input"} create a prediction (201, input
validated first: 422 problem+json with invalid_fields), honouring `Prefer: wait[=N]`; GET
/predictions/{id} moves starting -> processing (tqdm-style logs, tokens streaming into a
language model's output) -> succeeded; POST /predictions/{id}/cancel; POST /files takes a
multipart upload; GET /account answers who the token belongs to. Every /v1 call needs
`Authorization: Bearer <token>` (401 problem+json otherwise). Output files are served from
/delivery/..., without auth, like replicate.delivery.

The models are real but tiny: image models draw Pillow images, language models answer with the
sandbox's text, Whisper reads the text the sandbox TTS embeds in its WAV."""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.providers.adapter import ProviderError
from services.providers.sandbox import media
from tests.fakes.hosted import IMAGE_TYPES, Clock, FileHost, Script, picture

WHISPER_VERSION = "8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e"
# model name -> kind; official models can be run without naming a version.
OFFICIAL = {
    "black-forest-labs/flux-schnell": "image",
    "meta/meta-llama-3-8b-instruct": "language",
}
VERSIONS = {WHISPER_VERSION: ("openai/whisper", "whisper")}
ASPECT_RATIOS = {
    "1:1": (1, 1),
    "16:9": (16, 9),
    "21:9": (21, 9),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "4:5": (4, 5),
    "5:4": (5, 4),
    "3:4": (3, 4),
    "4:3": (4, 3),
    "9:16": (9, 16),
    "9:21": (9, 21),
}
# The fake draws images at this many pixels on the long side, to stay cheap.
LONG_SIDE = 128
STEPS = 4


@dataclass
class FakePrediction:
    id: str
    model: str
    version: str
    kind: str
    input: dict[str, Any]
    clock: Clock
    created_at: str
    canceled: bool = False
    output: Any = None
    error: str | None = None
    preview_url: str = ""
    tokens: list[str] = field(default_factory=list)


class _Invalid(Exception):
    def __init__(self, field_name: str, description: str, kind: str) -> None:
        super().__init__(description)
        self.field_name, self.description, self.kind = field_name, description, kind


class ReplicateFake:
    """One fake Replicate account: its token, its timings, and every prediction it made."""

    def __init__(
        self,
        token: str = "r8_test_token",
        *,
        queue_seconds: float = 0.0,
        run_seconds: float = 0.0,
        latency: float = 0.0,
        previews: bool = False,
    ) -> None:
        self.token = token
        self.queue_seconds = queue_seconds
        self.run_seconds = run_seconds
        # Image predictions publish a low-resolution partial output while processing.
        self.previews = previews
        self.script = Script(latency)
        self.files = FileHost("/delivery")
        self.predictions: dict[str, FakePrediction] = {}
        self.uploads: dict[str, tuple[bytes, str]] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/account", self._account, methods=["GET"]),
                Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions/{pid}", self._get, methods=["GET"]),
                Route("/v1/predictions/{pid}/cancel", self._cancel, methods=["POST"]),
                Route("/v1/files", self._upload, methods=["POST"]),
                Route("/delivery/{name}", self._delivery, methods=["GET"]),
            ]
        )

    def start(self, model: str, model_input: dict[str, Any]) -> str:
        """Create a prediction directly (as an earlier worker would have); its id."""
        name, _, version = model.partition(":")
        kind = VERSIONS[version][1] if version else OFFICIAL[name]
        return self._start(name, version, kind, model_input).id

    @property
    def canceled(self) -> list[str]:
        return [p.id for p in self.predictions.values() if p.canceled]

    # --- routes --------------------------------------------------------------------------

    async def _account(self, request: Request) -> Response:
        if (denied := await self._gate("account", request)) is not None:
            return denied
        return JSONResponse({"type": "user", "username": "genmesh", "name": "genmesh tests"})

    async def _create(self, request: Request) -> Response:
        if (denied := await self._gate("create", request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "Invalid JSON", "The request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _problem(422, "Input validation failed", "- input: input is required")
        if "owner" in request.path_params:
            name = f"{request.path_params['owner']}/{request.path_params['name']}"
            version, kind = "", OFFICIAL.get(name)
        else:
            version = str(body.get("version", ""))
            name, kind = VERSIONS.get(version, ("", None))
        if kind is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        try:
            _validate(kind, body["input"], self.uploads)
        except _Invalid as exc:
            detail = f"- input.{exc.field_name}: {exc.description}\n"
            return _problem(
                422,
                "Input validation failed",
                detail,
                invalid_fields=[
                    {
                        "type": exc.kind,
                        "field": f"input.{exc.field_name}",
                        "description": exc.description,
                    }
                ],
            )
        prediction = self._start(name, version, kind, body["input"])
        wait = _prefer_wait(request.headers.get("prefer", ""))
        for _ in range(int(wait * 50)):
            if self._state(request, prediction)["status"] not in ("starting", "processing"):
                break
            await asyncio.sleep(0.02)
        return JSONResponse(self._state(request, prediction), 201)

    async def _get(self, request: Request) -> Response:
        if (denied := await self._gate("get", request)) is not None:
            return denied
        prediction = self.predictions.get(request.path_params["pid"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return JSONResponse(self._state(request, prediction))

    async def _cancel(self, request: Request) -> Response:
        if (denied := await self._gate("cancel", request)) is not None:
            return denied
        prediction = self.predictions.get(request.path_params["pid"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if self._state(request, prediction)["status"] in ("starting", "processing"):
            prediction.canceled = True
        return JSONResponse(self._state(request, prediction))

    async def _upload(self, request: Request) -> Response:
        if (denied := await self._gate("upload", request)) is not None:
            return denied
        async with request.form() as form:
            content = form.get("content")
            if not isinstance(content, UploadFile):
                return _problem(400, "Bad request", "content is required")
            data = await content.read()
            media_type = content.content_type or "application/octet-stream"
            filename = content.filename or "file"
        file_id = uuid.uuid4().hex
        self.uploads[file_id] = (data, media_type)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "id": file_id,
                "name": filename,
                "content_type": media_type,
                "size": len(data),
                "checksums": {},
                "metadata": {},
                "created_at": _now(),
                "urls": {"get": f"{base}/v1/files/{file_id}"},
            },
            201,
        )

    async def _delivery(self, request: Request) -> Response:
        if (failure := await self.script.check("delivery", request)) is not None:
            return failure
        return self.files.serve(request.path_params["name"])

    # --- the predictions -----------------------------------------------------------------

    async def _gate(self, route: str, request: Request) -> Response | None:
        if (failure := await self.script.check(route, request)) is not None:
            return failure
        auth = request.headers.get("authorization", "")
        if auth not in (f"Bearer {self.token}", f"Token {self.token}"):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return None

    def _start(self, name: str, version: str, kind: str, model_input: dict[str, Any]) -> Any:
        prediction = FakePrediction(
            id=uuid.uuid4().hex[:26],
            model=name,
            version=version or f"official-{name}",
            kind=kind,
            input=model_input,
            clock=Clock(self.queue_seconds, self.run_seconds),
            created_at=_now(),
        )
        self.predictions[prediction.id] = prediction
        return prediction

    def _state(self, request: Request, p: FakePrediction) -> dict[str, Any]:
        phase = p.clock.phase()
        if p.canceled:
            status = "canceled"
        elif phase == "queued":
            status = "starting"
        elif phase == "running":
            status = "processing"
        else:
            self._finish(request, p)
            status = "failed" if p.error else "succeeded"
        base = f"{str(request.base_url).rstrip('/')}/v1/predictions/{p.id}"
        return {
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "input": p.input,
            "logs": _logs(p, status),
            "output": self._output(request, p, status),
            "data_removed": False,
            "error": p.error if status == "failed" else None,
            "status": status,
            "created_at": p.created_at,
            "urls": {
                "get": base,
                "cancel": f"{base}/cancel",
                "web": f"https://replicate.com/p/{p.id}",
            },
        }

    def _output(self, request: Request, p: FakePrediction, status: str) -> Any:
        if status == "succeeded":
            return p.output
        if status != "processing":
            return None
        if p.kind == "language":
            tokens = _tokens(p)
            return tokens[: int(len(tokens) * p.clock.fraction())]
        if p.kind == "image" and self.previews:
            if not p.preview_url:
                small = picture(p.input["prompt"], 0, 16, 16)
                p.preview_url = self.files.put(small, "image/png", ".png", request)
            return [p.preview_url]
        return None

    def _finish(self, request: Request, p: FakePrediction) -> None:
        if p.output is not None or p.error:
            return
        args = p.input
        if p.kind == "language":
            p.output = _tokens(p)
        elif p.kind == "whisper":
            try:
                text = media.speech_to_text(_file_bytes(args["audio"], self.uploads))
            except ProviderError as exc:
                p.error = f"Failed to load audio: {exc.message}"
                return
            p.output = {
                "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": text}],
                "transcription": text,
                "translation": None,
                "txt_file": None,
                "srt_file": None,
                "detected_language": args.get("language") or "english",
            }
        else:
            fmt = args.get("output_format", "webp")
            wide, high = ASPECT_RATIOS[args.get("aspect_ratio", "1:1")]
            scale = LONG_SIDE / max(wide, high)
            size = (round(wide * scale), round(high * scale))
            urls = []
            for i in range(args.get("num_outputs", 1)):
                data = picture(args["prompt"], args.get("seed", 0) + i, *size, fmt)
                urls.append(self.files.put(data, IMAGE_TYPES[fmt], f".{fmt}", request))
            p.output = urls


def _validate(kind: str, args: dict[str, Any], uploads: dict[str, tuple[bytes, str]]) -> None:
    """Replicate checks input against the model's schema when the prediction is created."""
    if kind == "whisper":
        _file_bytes(args.get("audio"), uploads)
        if "translate" in args and not isinstance(args["translate"], bool):
            raise _Invalid("translate", "Invalid type. Expected: boolean", "invalid_type")
        return
    prompt = args.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _Invalid("prompt", "prompt is required", "required")
    if kind == "language":
        _bounded(args, "max_tokens", 1, 32_768)
        _bounded(args, "temperature", 0, 5)
        return
    if args.get("aspect_ratio", "1:1") not in ASPECT_RATIOS:
        allowed = ", ".join(f'"{a}"' for a in ASPECT_RATIOS)
        raise _Invalid(
            "aspect_ratio", f"aspect_ratio must be one of the following: {allowed}", "enum"
        )
    if args.get("output_format", "webp") not in ("webp", "jpg", "png"):
        raise _Invalid("output_format", "output_format must be one of: webp, jpg, png", "enum")
    _bounded(args, "num_outputs", 1, 4)
    _bounded(args, "num_inference_steps", 1, 4)


def _bounded(args: dict[str, Any], name: str, low: float, high: float) -> None:
    value = args.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(name, "Invalid type. Expected: number", "invalid_type")
    if value < low:
        raise _Invalid(name, f"Must be greater than or equal to {low:g}", "greater_than_equal")
    if value > high:
        raise _Invalid(name, f"Must be less than or equal to {high:g}", "less_than_equal")


def _file_bytes(value: Any, uploads: dict[str, tuple[bytes, str]]) -> bytes:
    if isinstance(value, str) and value.startswith("data:") and "," in value:
        try:
            return base64.b64decode(value.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid("audio", "Invalid data URI", "format") from None
    if isinstance(value, str) and "/v1/files/" in value:
        upload = uploads.get(value.rsplit("/", 1)[-1])
        if upload is not None:
            return upload[0]
    raise _Invalid("audio", "Does not match format 'uri'", "format")


def _tokens(p: FakePrediction) -> list[str]:
    if not p.tokens:
        words = media.text_to_text(p.input["prompt"]).split(" ")
        p.tokens = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
    return p.tokens


def _logs(p: FakePrediction, status: str) -> str:
    if status == "starting":
        return ""
    if p.kind == "whisper":
        return "Transcribe with large-v3 model.\n"
    done = STEPS if status == "succeeded" else int(p.clock.fraction() * STEPS)
    lines = []
    for i in range(done + 1):
        pct = 100 * i // STEPS
        bar = "█" * i + " " * (STEPS - i)
        lines.append(f"{pct:3d}%|{bar}| {i}/{STEPS} [00:00<00:00, 9.00it/s]")
    return "Using seed: 0\n" + "\n".join(lines) + "\n"


def _prefer_wait(header: str) -> float:
    """Seconds `Prefer: wait` or `Prefer: wait=N` asks the create call to hold (60 at most)."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "wait":
            try:
                return min(60.0, float(value)) if value else 60.0
            except ValueError:
                return 0.0
    return 0.0


def _problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"title": title, "detail": detail, "status": status} | extra
    return JSONResponse(body, status, media_type="application/problem+json")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
