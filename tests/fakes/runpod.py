"""RunPod serverless endpoints on loopback, for tests, benchmarks and the demo mode.

Serves RunPod's /v2/{endpoint_id} API: POST /run {"input"} -> {"id", "status": "IN_QUEUE"};
GET /status/{id} moves IN_QUEUE -> IN_PROGRESS (its output is the handler's latest
progress_update) -> COMPLETED | FAILED (the SDK's error JSON) | CANCELLED; GET /stream/{id}
hands over chunks a generator handler yielded since the last call; POST /cancel/{id};
GET /health. Every call needs the key (`Authorization: Bearer <key>`, 401 otherwise).

Each endpoint runs a fake worker that follows genmesh's RunPod input/output convention (see
services/providers/runpod.py). The built-in ones stand for models a user would deploy on a
GPU pod: an image describer, a product-copy writer (a generator handler, streaming tokens),
a voice-cloning TTS, a painter (progress with a preview), a transcriber and an animator
(whose video comes back as a URL). Pass your own `workers` to add more."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.providers.adapter import ProviderError
from services.providers.sandbox import media
from tests.fakes.hosted import Clock, FileHost, Script, picture

VOICES = ("narrator", "warm", "bright")


@dataclass
class WorkerRun:
    """What a handler does with one job: progress updates and yielded chunks spread over the
    run, then its output (for a generator handler, the aggregated chunks)."""

    output: Any = None
    updates: list[Any] = field(default_factory=list)
    chunks: list[Any] = field(default_factory=list)


# A fake handler: the job's input and a way to publish a file (its URL); raises ValueError
# (or anything else) to fail the job as the SDK would.
Worker = Callable[[dict[str, Any], Callable[[bytes, str, str], str]], WorkerRun]


@dataclass
class FakeJob:
    id: str
    endpoint: str
    input: dict[str, Any]
    clock: Clock
    run: WorkerRun | None
    error: str | None
    cancelled: bool = False
    streamed: int = 0


class RunPodFake:
    """One fake RunPod account: its key, its endpoints' workers, timings and jobs."""

    def __init__(
        self,
        key: str = "rp_test_key",
        *,
        workers: dict[str, Worker] | None = None,
        queue_seconds: float = 0.0,
        run_seconds: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        self.key = key
        self.workers = dict(BUILT_IN if workers is None else workers)
        self.queue_seconds = queue_seconds
        self.run_seconds = run_seconds
        self.script = Script(latency)
        self.files = FileHost()
        self.jobs: dict[str, FakeJob] = {}
        self.app = Starlette(
            routes=[
                Route("/files/{name}", self._file, methods=["GET"]),
                Route("/v2/{endpoint}/run", self._run, methods=["POST"]),
                Route("/v2/{endpoint}/status/{jid}", self._status, methods=["GET", "POST"]),
                Route("/v2/{endpoint}/stream/{jid}", self._stream, methods=["GET", "POST"]),
                Route("/v2/{endpoint}/cancel/{jid}", self._cancel, methods=["POST"]),
                Route("/v2/{endpoint}/health", self._health, methods=["GET"]),
            ]
        )

    def submit(self, endpoint: str, job_input: dict[str, Any], base_url: str) -> str:
        """Run a job directly (as an earlier worker would have); its id."""
        worker = self.workers[endpoint]
        run, error = None, None

        def put(data: bytes, kind: str, suffix: str) -> str:
            return self.files.url(self.files.put_named(data, kind, suffix), base_url)

        try:
            run = worker(job_input, put)
        except Exception as exc:
            error = json.dumps(
                {
                    "error_type": str(type(exc)),
                    "error_message": str(exc),
                    "error_traceback": f"Traceback (most recent call last):\n  {exc!r}",
                    "hostname": "fake-pod",
                    "worker_id": "fake-worker",
                    "runpod_version": "1.7.13",
                }
            )
        job = FakeJob(
            f"{uuid.uuid4()}-u1",
            endpoint,
            job_input,
            Clock(self.queue_seconds, self.run_seconds),
            run,
            error,
        )
        self.jobs[job.id] = job
        return job.id

    @property
    def cancelled(self) -> list[str]:
        return [j.id for j in self.jobs.values() if j.cancelled]

    # --- routes --------------------------------------------------------------------------

    async def _run(self, request: Request) -> Response:
        if (denied := await self._gate("run", request)) is not None:
            return denied
        endpoint = request.path_params["endpoint"]
        if endpoint not in self.workers:
            return JSONResponse({"error": f"endpoint {endpoint} not found"}, 404)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid JSON body"}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return JSONResponse({"error": "the request needs an input object"}, 400)
        jid = self.submit(endpoint, body["input"], str(request.base_url).rstrip("/"))
        return JSONResponse({"id": jid, "status": "IN_QUEUE"})

    async def _status(self, request: Request) -> Response:
        if (denied := await self._gate("status", request)) is not None:
            return denied
        job = self._find(request)
        if job is None:
            return JSONResponse({"error": "request does not exist"}, 404)
        return JSONResponse(self._state(job))

    async def _stream(self, request: Request) -> Response:
        if (denied := await self._gate("stream", request)) is not None:
            return denied
        job = self._find(request)
        if job is None:
            return JSONResponse({"error": "request does not exist"}, 404)
        state = self._state(job)
        ready = _visible(job.run.chunks if job.run else [], job.clock, state["status"])
        fresh = ready[job.streamed :]
        job.streamed = len(ready)
        return JSONResponse({"status": state["status"], "stream": [{"output": c} for c in fresh]})

    async def _cancel(self, request: Request) -> Response:
        if (denied := await self._gate("cancel", request)) is not None:
            return denied
        job = self._find(request)
        if job is None:
            return JSONResponse({"error": "request does not exist"}, 404)
        if self._state(job)["status"] in ("IN_QUEUE", "IN_PROGRESS"):
            job.cancelled = True
        return JSONResponse({"id": job.id, "status": self._state(job)["status"]})

    async def _health(self, request: Request) -> Response:
        if (denied := await self._gate("health", request)) is not None:
            return denied
        endpoint = request.path_params["endpoint"]
        if endpoint not in self.workers:
            return JSONResponse({"error": f"endpoint {endpoint} not found"}, 404)
        states = [self._state(j)["status"] for j in self.jobs.values() if j.endpoint == endpoint]
        return JSONResponse(
            {
                "jobs": {
                    "completed": states.count("COMPLETED"),
                    "failed": states.count("FAILED"),
                    "inProgress": states.count("IN_PROGRESS"),
                    "inQueue": states.count("IN_QUEUE"),
                    "retried": 0,
                },
                "workers": {"idle": 1, "running": states.count("IN_PROGRESS")},
            }
        )

    async def _file(self, request: Request) -> Response:
        if (failure := await self.script.check("file", request)) is not None:
            return failure
        return self.files.serve(request.path_params["name"])

    # --- helpers -------------------------------------------------------------------------

    async def _gate(self, route: str, request: Request) -> Response | None:
        if (failure := await self.script.check(route, request)) is not None:
            return failure
        if request.headers.get("authorization") not in (f"Bearer {self.key}", self.key):
            return Response("Unauthorized", 401, media_type="text/plain")
        return None

    def _find(self, request: Request) -> FakeJob | None:
        job = self.jobs.get(request.path_params["jid"])
        return job if job is not None and job.endpoint == request.path_params["endpoint"] else None

    def _state(self, job: FakeJob) -> dict[str, Any]:
        body: dict[str, Any] = {"id": job.id, "delayTime": 12, "workerId": "fake-worker"}
        phase = job.clock.phase()
        if job.cancelled:
            return body | {"status": "CANCELLED"}
        if phase == "queued":
            return body | {"status": "IN_QUEUE"}
        if job.error is not None or job.run is None:
            if phase == "running":
                return body | {"status": "IN_PROGRESS"}
            return body | {"status": "FAILED", "error": job.error, "executionTime": 50}
        if phase == "running":
            updates = _visible(job.run.updates, job.clock, "IN_PROGRESS")
            return body | {"status": "IN_PROGRESS", "output": updates[-1] if updates else None}
        output = list(job.run.chunks) if job.run.chunks else job.run.output
        return body | {"status": "COMPLETED", "output": output, "executionTime": 50}


def _visible(items: list[Any], clock: Clock, status: str) -> list[Any]:
    """The items a run has reached: spread evenly over it, all of them once it is done."""
    if status in ("COMPLETED", "FAILED", "CANCELLED"):
        return list(items)
    if status != "IN_PROGRESS":
        return []
    count = int(clock.fraction() * (len(items) + 1))
    return list(items[: min(count, len(items))])


# --- the built-in workers ------------------------------------------------------------------


def _parameters(job_input: dict[str, Any]) -> dict[str, Any]:
    parameters = job_input.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError("invalid input: parameters must be an object")
    return parameters


def _prompt(job_input: dict[str, Any]) -> str:
    prompt = job_input.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("invalid input: prompt is required")
    return prompt


def _decoded(job_input: dict[str, Any], key: str) -> bytes:
    value = job_input.get(key)
    if not isinstance(value, str):
        raise ValueError(f"invalid input: {key} (base64) is required")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"invalid input: {key} is not base64") from None


def describer(job_input: dict[str, Any], put: Callable[[bytes, str, str], str]) -> WorkerRun:
    """image-to-text: a description of the picture."""
    try:
        text = media.image_to_text(_decoded(job_input, "image"))
    except ProviderError as exc:
        raise ValueError(exc.message) from None
    return WorkerRun({"text": text}, ["loading image", {"percent": 50, "message": "describing"}])


def copywriter(job_input: dict[str, Any], put: Callable[[bytes, str, str], str]) -> WorkerRun:
    """text-to-text as a generator handler: the copy streams out word by word."""
    words = media.text_to_text(_prompt(job_input)).split(" ")
    limit = _parameters(job_input).get("max_tokens")
    if isinstance(limit, int):
        words = words[:limit]
    return WorkerRun(chunks=[{"text": w if i == 0 else f" {w}"} for i, w in enumerate(words)])


def voice(job_input: dict[str, Any], put: Callable[[bytes, str, str], str]) -> WorkerRun:
    """text-to-speech in a cloned voice; WAV only."""
    parameters = _parameters(job_input)
    speaker = parameters.get("voice", "narrator")
    if speaker not in VOICES:
        raise ValueError(f"unknown voice {speaker!r}; this pod knows {', '.join(VOICES)}")
    if parameters.get("format", "wav") != "wav":
        raise ValueError("invalid input: this pod speaks wav only")
    wav = media.text_to_speech(_prompt(job_input), 60)
    audio = base64.b64encode(wav).decode()
    return WorkerRun(
        {"audio": audio, "media_type": "audio/wav"},
        [{"percent": 50, "message": f"speaking as {speaker}"}],
    )


def painter(job_input: dict[str, Any], put: Callable[[bytes, str, str], str]) -> WorkerRun:
    """text-to-image with step progress and a preview halfway."""
    prompt = _prompt(job_input)
    parameters = _parameters(job_input)
    width, height = parameters.get("width", 256), parameters.get("height", 256)
    seed = parameters.get("seed", 0)
    small = picture(prompt, seed, 16, 16)
    updates: list[Any] = [
        {"percent": 25, "message": "step 1/4"},
        {
            "percent": 50,
            "message": "step 2/4",
            "preview": f"data:image/png;base64,{base64.b64encode(small).decode()}",
        },
        {"percent": 75, "message": "step 3/4"},
    ]
    image = base64.b64encode(picture(prompt, seed, width, height)).decode()
    return WorkerRun({"images": [image], "media_type": "image/png"}, updates)


def scribe(job_input: dict[str, Any], put: Callable[[bytes, str, str], str]) -> WorkerRun:
    """speech-to-text: returns the transcript as a plain string."""
    try:
        return WorkerRun(media.speech_to_text(_decoded(job_input, "audio")))
    except ProviderError as exc:
        raise ValueError(exc.message) from None


def animator(job_input: dict[str, Any], put: Callable[[bytes, str, str], str]) -> WorkerRun:
    """image-to-video: an animated GIF, handed back as a URL on the pod's file host."""
    try:
        gif, _ = media.image_to_video(_decoded(job_input, "image"), "pan", 1.0, 4)
    except ProviderError as exc:
        raise ValueError(exc.message) from None
    return WorkerRun({"video": {"url": put(gif, "image/gif", ".gif"), "media_type": "image/gif"}})


BUILT_IN: dict[str, Worker] = {
    "describer": describer,
    "copywriter": copywriter,
    "voice": voice,
    "painter": painter,
    "scribe": scribe,
    "animator": animator,
}
