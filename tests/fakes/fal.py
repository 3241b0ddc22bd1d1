"""fal.ai's queue API (queue.fal.run) on loopback, for tests, benchmarks and the demo mode.

Speaks the wire format fal documents: POST /{model_id} queues a request and answers with
request_id, response_url, status_url and cancel_url; GET /{owner}/{app}/requests/{id}/status
(?logs=1) moves IN_QUEUE (queue_position) -> IN_PROGRESS (logs) -> COMPLETED; GET
/{owner}/{app}/requests/{id} gives the output, or the model's error with its status code
(422 with a `detail` list for bad input); PUT .../cancel answers 202 CANCELLATION_REQUESTED or
400 ALREADY_COMPLETED. Every queue call needs `Authorization: Key <key>` (401 otherwise).

The "models" are real but tiny: images are Pillow PNG/JPEG, image-to-video returns an animated
GIF, speech-to-text reads the text the sandbox TTS embeds in its WAV. The kind of model is
told by its input: audio_url -> transcript, a model id containing "video" -> video, else
images."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.providers.adapter import ProviderError
from services.providers.sandbox import media
from tests.fakes.hosted import IMAGE_TYPES, Clock, FileHost, Script, convert, picture

# Named sizes, as fal defines them; the fake renders them at 1/SCALE to stay cheap.
IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
SCALE = 8
LOG_STEPS = 4


@dataclass
class QueuedRequest:
    id: str
    model: str
    app: str
    input: dict[str, Any]
    clock: Clock
    cancelled: bool = False
    # (status code, body) once the "runner" has finished.
    outcome: tuple[int, Any] | None = None
    started_logs: list[dict[str, Any]] = field(default_factory=list)


class FalFake:
    """One fake fal account: its key, its queue timings, and every request it has seen."""

    def __init__(
        self,
        key: str = "fal-test-key",
        *,
        queue_seconds: float = 0.0,
        queue_ahead: int = 0,
        run_seconds: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        self.key = key
        self.queue_seconds = queue_seconds
        self.queue_ahead = queue_ahead
        self.run_seconds = run_seconds
        self.script = Script(latency)
        self.files = FileHost()
        self.queued: dict[str, QueuedRequest] = {}
        self.app = Starlette(
            routes=[
                Route("/files/{name}", self._file, methods=["GET"]),
                Route("/{app:path}/requests/{rid}/status", self._status, methods=["GET"]),
                Route("/{app:path}/requests/{rid}/cancel", self._cancel, methods=["PUT"]),
                Route("/{app:path}/requests/{rid}", self._result, methods=["GET"]),
                Route("/{model:path}", self._submit, methods=["POST"]),
            ]
        )

    def enqueue(self, model: str, arguments: dict[str, Any]) -> str:
        """Queue a request directly (as an earlier worker would have); its request_id."""
        parts = model.split("/")
        app = "/".join(parts[:3] if parts[0] in ("workflows", "comfy") else parts[:2])
        clock = Clock(self.queue_seconds, self.run_seconds, self.queue_ahead)
        request = QueuedRequest(str(uuid.uuid4()), model, app, arguments, clock)
        self.queued[request.id] = request
        return request.id

    @property
    def cancels(self) -> list[str]:
        return [rid for rid, r in self.queued.items() if r.cancelled]

    # --- routes --------------------------------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        if (failure := await self.script.check("submit", request)) is not None:
            return failure
        if (denied := self._authorize(request)) is not None:
            return denied
        try:
            arguments = await request.json()
        except ValueError:
            return JSONResponse({"detail": "Request body is not valid JSON"}, 422)
        if not isinstance(arguments, dict):
            return JSONResponse({"detail": "Request body must be a JSON object"}, 422)
        rid = self.enqueue(request.path_params["model"], arguments)
        return JSONResponse(self._urls(request, self.queued[rid]) | {"status": "IN_QUEUE"})

    async def _status(self, request: Request) -> Response:
        if (failure := await self.script.check("status", request)) is not None:
            return failure
        if (denied := self._authorize(request)) is not None:
            return denied
        queued = self._find(request)
        if queued is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        with_logs = request.query_params.get("logs") in ("1", "true")
        body = self._urls(request, queued)
        phase = "done" if queued.cancelled else queued.clock.phase()
        if phase == "queued":
            return JSONResponse(
                body | {"status": "IN_QUEUE", "queue_position": queued.clock.position()}
            )
        logs = _logs(queued.clock) if with_logs else None
        if phase == "running":
            return JSONResponse(body | {"status": "IN_PROGRESS", "logs": logs})
        status, result = self._finish(request, queued)
        done = body | {"status": "COMPLETED", "logs": logs, "metrics": {"inference_time": 0.1}}
        if status >= 400:
            done |= {"error": _message(result), "error_type": _error_type(result)}
        return JSONResponse(done)

    async def _result(self, request: Request) -> Response:
        if (failure := await self.script.check("result", request)) is not None:
            return failure
        if (denied := self._authorize(request)) is not None:
            return denied
        queued = self._find(request)
        if queued is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        if not queued.cancelled and queued.clock.phase() != "done":
            return JSONResponse({"detail": "Request is still in progress"}, 400)
        status, body = self._finish(request, queued)
        return JSONResponse(body, status)

    async def _cancel(self, request: Request) -> Response:
        if (failure := await self.script.check("cancel", request)) is not None:
            return failure
        if (denied := self._authorize(request)) is not None:
            return denied
        queued = self._find(request)
        if queued is None:
            return JSONResponse({"status": "NOT_FOUND"}, 404)
        if queued.outcome is not None or queued.clock.phase() == "done":
            return JSONResponse({"status": "ALREADY_COMPLETED"}, 400)
        queued.cancelled = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)

    async def _file(self, request: Request) -> Response:
        if (failure := await self.script.check("file", request)) is not None:
            return failure
        return self.files.serve(request.path_params["name"])

    # --- helpers -------------------------------------------------------------------------

    def _authorize(self, request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Key {self.key}":
            return None
        return JSONResponse({"detail": "No user found for Key ID and Secret"}, 401)

    def _find(self, request: Request) -> QueuedRequest | None:
        queued = self.queued.get(request.path_params["rid"])
        # Status and result live under owner/app only, never the model's subpath.
        if queued is None or queued.app != request.path_params["app"]:
            return None
        return queued

    def _urls(self, request: Request, queued: QueuedRequest) -> dict[str, str]:
        base = f"{str(request.base_url).rstrip('/')}/{queued.app}/requests/{queued.id}"
        return {
            "request_id": queued.id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _finish(self, request: Request, queued: QueuedRequest) -> tuple[int, Any]:
        if queued.outcome is None:
            if queued.cancelled:
                queued.outcome = (400, {"detail": "Request was cancelled"})
            else:
                queued.outcome = self._run_model(request, queued)
        return queued.outcome

    def _run_model(self, request: Request, queued: QueuedRequest) -> tuple[int, Any]:
        args = queued.input
        try:
            if "audio_url" in args:
                return 200, _transcribe(args)
            if "video" in queued.model:
                return 200, self._video(request, args)
            return 200, self._images(request, queued.model, args)
        except _Invalid as exc:
            return 422, {"detail": [exc.detail()]}

    def _images(self, request: Request, model: str, args: dict[str, Any]) -> dict[str, Any]:
        prompt = _text(args, "prompt")
        count = _int(args, "num_images", 1, 1, 4)
        steps_max = 12 if "schnell" in model else 50
        _int(args, "num_inference_steps", 4, 1, steps_max)
        seed = _int(args, "seed", 42, 0, 2**32 - 1)
        fmt = args.get("output_format", "jpeg")
        if fmt not in ("jpeg", "png"):
            raise _Invalid("output_format", "Input should be 'jpeg' or 'png'", "enum", fmt)
        if "image_url" in args:
            source = _decode_file(args, "image_url")
            try:
                png, _ = media.image_to_image(source, "sepia", 256, 256)
            except ProviderError as exc:
                raise _Invalid("image_url", exc.message, "image_load_error", "...") from None
            rendered = [convert(png, fmt) for _ in range(count)]
        else:
            size = args.get("image_size", "landscape_4_3")
            if size not in IMAGE_SIZES:
                allowed = ", ".join(f"'{s}'" for s in IMAGE_SIZES)
                raise _Invalid("image_size", f"Input should be {allowed}", "enum", size)
            width, height = (side // SCALE for side in IMAGE_SIZES[size])
            rendered = [picture(prompt, seed + i, width, height, fmt) for i in range(count)]
        images = []
        for data in rendered:
            kind = IMAGE_TYPES[fmt]
            url = self.files.put(data, kind, f".{fmt}", request)
            images.append({"url": url, "content_type": kind, "file_size": len(data)})
        return {"images": images, "seed": seed, "prompt": prompt, "has_nsfw_concepts": [False]}

    def _video(self, request: Request, args: dict[str, Any]) -> dict[str, Any]:
        _text(args, "prompt")
        source = _decode_file(args, "image_url")
        duration = args.get("duration", "5")
        if duration not in ("5", "10"):
            raise _Invalid("duration", "Input should be '5' or '10'", "enum", duration)
        try:
            gif, _ = media.image_to_video(source, "zoom", 1.0, 4)
        except ProviderError as exc:
            raise _Invalid("image_url", exc.message, "image_load_error", "...") from None
        url = self.files.put(gif, "image/gif", ".gif", request)
        return {
            "video": {
                "url": url,
                "content_type": "image/gif",
                "file_name": "video.gif",
                "file_size": len(gif),
            }
        }


class _Invalid(Exception):
    """A model validation error, in fal's `detail` item shape."""

    def __init__(self, field_name: str, msg: str, kind: str, value: Any) -> None:
        super().__init__(msg)
        self.field_name, self.msg, self.kind, self.value = field_name, msg, kind, value

    def detail(self) -> dict[str, Any]:
        return {
            "loc": ["body", self.field_name],
            "msg": self.msg,
            "type": self.kind,
            "input": self.value,
        }


def _logs(clock: Clock) -> list[dict[str, Any]]:
    done = int(clock.fraction() * LOG_STEPS)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    return [
        {
            "message": f"step {i}/{LOG_STEPS} {100 * i // LOG_STEPS}%",
            "level": "INFO",
            "source": "user",
            "timestamp": stamp,
        }
        for i in range(1, done + 1)
    ]


def _message(body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list) and detail:
        return str(detail[0].get("msg", detail[0]))
    return str(detail)


def _error_type(body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail:
        return str(detail[0].get("type", "validation_error"))
    return "internal_error"


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(name, "Field required", "missing", value)
    return value


def _int(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(name, "Input should be a valid integer", "int_type", value)
    if not low <= value <= high:
        raise _Invalid(
            name,
            f"Input should be greater than or equal to {low} and less than or equal to {high}",
            "range",
            value,
        )
    return value


def _decode_file(args: dict[str, Any], name: str) -> bytes:
    value = args.get(name)
    if not isinstance(value, str) or not value.startswith("data:") or "," not in value:
        raise _Invalid(name, "The fake fal accepts files as base64 data URIs", "url", value)
    try:
        return base64.b64decode(value.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(name, "Invalid base64 data URI", "file_download_error", "...") from None


def _transcribe(args: dict[str, Any]) -> dict[str, Any]:
    audio = _decode_file(args, "audio_url")
    task = args.get("task", "transcribe")
    if task not in ("transcribe", "translate"):
        raise _Invalid("task", "Input should be 'transcribe' or 'translate'", "enum", task)
    try:
        text = media.speech_to_text(audio)
    except ProviderError as exc:
        raise _Invalid("audio_url", exc.message, "audio_load_error", "...") from None
    return {
        "text": text,
        "chunks": [{"timestamp": [0.0, 1.0], "text": text}],
        "inferred_languages": [args.get("language") or "en"],
    }
