"""A fake Runware REST API on loopback, in its documented wire format.

POST /v1 with a JSON array of tasks (Bearer key). imageInference tasks with
"deliveryMethod": "async" are queued and acknowledged; getResponse reports each result as
"processing" until it is ready, then "success" with imageURL (served from /images/...) or
imageBase64Data. Sync delivery answers with the finished images at once. Errors come as
{"errors": [{"code", "message", "parameter", "taskType", "taskUUID"}]}."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import Faults

FLUX_SCHNELL = "runware:100@1"
FLUX_DEV = "runware:101@1"
_PIL_FORMATS = {
    "JPG": ("JPEG", "image/jpeg"),
    "PNG": ("PNG", "image/png"),
    "WEBP": ("WEBP", "image/webp"),
}


def image_bytes(width: int, height: int, fmt: str, label: str) -> bytes:
    """A real image in `fmt` (JPG, PNG or WEBP)."""
    image = Image.new("RGB", (width, height), (30, 90, 160))
    ImageDraw.Draw(image).text((4, 4), label[:40], fill=(250, 250, 250))
    buffer = io.BytesIO()
    image.save(buffer, _PIL_FORMATS[fmt][0])
    return buffer.getvalue()


def _error(code: str, message: str, task: dict[str, Any], parameter: str = "") -> dict[str, Any]:
    error = {"code": code, "message": message, "taskType": task.get("taskType", "")}
    if parameter:
        error["parameter"] = parameter
    if task.get("taskUUID"):
        error["taskUUID"] = task["taskUUID"]
    return error


@dataclass
class Job:
    task: dict[str, Any]
    # Polls answered "processing" before the first result is ready; then one more per result.
    polls_left: int
    fails: bool
    images: list[bytes] = field(default_factory=list)
    seen: int = 0


@dataclass
class RunwareFake:
    """Configurable fake: processing polls before results, failing tasks, latency."""

    api_key: str = "rw-test-key"
    url: str = ""
    models: set[str] = field(default_factory=lambda: {FLUX_SCHNELL, FLUX_DEV})
    processing_polls: int = 2
    # How many of the next inference tasks fail with a provider timeout.
    fail_next: int = 0
    latency: float = 0.0
    faults: Faults = field(default_factory=Faults)
    jobs: dict[str, Job] = field(default_factory=dict)
    inferences: list[dict[str, Any]] = field(default_factory=list)
    cdn_authorizations: list[str | None] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def existing(
        self, task: dict[str, Any], *, processing_polls: int = 0, fails: bool = False
    ) -> str:
        """An inference task sent earlier (say by a worker that died); returns its taskUUID."""
        task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4())} | task
        self.jobs[task["taskUUID"]] = Job(task, processing_polls, fails)
        return str(task["taskUUID"])

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1", self._tasks, methods=["POST"]),
                Route("/images/{name}", self._cdn),
            ]
        )

    async def _tasks(self, request: Request) -> Response:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            auth = {"taskType": "authentication"}
            error = _error(
                "invalidApiKey", "Invalid API key. Get one at https://my.runware.ai/signup", auth
            )
            return JSONResponse({"errors": [error | {"parameter": "apiKey"}]}, 401)
        try:
            tasks = await request.json()
        except ValueError:
            tasks = None
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            error = _error("invalidRequestBody", "The request body must be an array of tasks", {})
            return JSONResponse({"errors": [error]}, 400)
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for task in tasks:
            if task.get("taskType") == "imageInference":
                self._infer(task, data, errors)
            elif task.get("taskType") == "getResponse":
                self._respond(task, data, errors)
            else:
                errors.append(_error("invalidTaskType", "Unsupported taskType", task, "taskType"))
        body: dict[str, Any] = {}
        if data:
            body["data"] = data
        if errors:
            body["errors"] = errors
        # Runware answers 400 when nothing in the request succeeded.
        return JSONResponse(body, 400 if errors and not data else 200)

    def _infer(self, task: dict[str, Any], data: list[Any], errors: list[Any]) -> None:
        problem = self._invalid(task)
        if problem:
            errors.append(_error(problem[0], problem[2], task, problem[1]))
            return
        self.inferences.append(task)
        job = Job(task, self.processing_polls, fails=self.fail_next > 0)
        self.fail_next = max(0, self.fail_next - 1)
        self.jobs[task["taskUUID"]] = job
        if task.get("deliveryMethod", "sync") == "async":
            data.append({"taskType": "imageInference", "taskUUID": task["taskUUID"]})
            return
        if job.fails:
            errors.append(_error("timeoutProvider", "The provider timed out", task))
            return
        job.polls_left, job.seen = 0, 0
        data.extend(self._results(job, everything=True))

    def _invalid(self, task: dict[str, Any]) -> tuple[str, str, str] | None:
        if not isinstance(task.get("taskUUID"), str) or len(task["taskUUID"]) != 36:
            return "invalidTaskUUID", "taskUUID", "taskUUID must be a UUID v4 string"
        if task["taskUUID"] in self.jobs:
            return "duplicateTaskUUID", "taskUUID", "This taskUUID has already been used"
        prompt = task.get("positivePrompt")
        if not isinstance(prompt, str) or not 2 <= len(prompt) <= 3000:
            return "invalidPositivePrompt", "positivePrompt", "positivePrompt must be 2-3000 chars"
        if task.get("model") not in self.models:
            return "invalidModel", "model", f"Invalid model identifier: {task.get('model')}"
        for side in ("width", "height"):
            value = task.get(side)
            if not isinstance(value, int) or not 128 <= value <= 2048 or value % 64:
                message = f"Invalid {side}: must be a multiple of 64 between 128 and 2048"
                return f"invalid{side.title()}", side, message
        if task.get("outputFormat", "JPG") not in _PIL_FORMATS:
            return "invalidOutputFormat", "outputFormat", "outputFormat must be JPG, PNG or WEBP"
        return None

    def _respond(self, task: dict[str, Any], data: list[Any], errors: list[Any]) -> None:
        job = self.jobs.get(str(task.get("taskUUID")))
        if job is None:
            message = f"No active task found with taskUUID {task.get('taskUUID')}"
            errors.append(_error("taskNotFound", message, task, "taskUUID"))
            return
        if job.polls_left > 0:
            job.polls_left -= 1
            data.append(self._processing(job))
            return
        if job.fails:
            failure = _error("timeoutProvider", "The provider timed out", job.task)
            errors.append(failure | {"taskType": "imageInference", "status": "error"})
            return
        data.extend(self._results(job, everything=False))

    def _processing(self, job: Job) -> dict[str, Any]:
        return {
            "taskType": "imageInference",
            "taskUUID": job.task["taskUUID"],
            "status": "processing",
        }

    def _results(self, job: Job, everything: bool) -> list[dict[str, Any]]:
        """Results ready so far: one more per poll, so partial results show up."""
        task = job.task
        count = task.get("numberResults", 1)
        fmt = task.get("outputFormat", "JPG")
        while len(job.images) < count:
            label = f"{task['positivePrompt']} #{len(job.images)}"
            job.images.append(image_bytes(task["width"], task["height"], fmt, label))
        job.seen = count if everything else min(count, job.seen + 1)
        results: list[dict[str, Any]] = []
        for index in range(job.seen):
            name = f"{task['taskUUID']}-{index}.{fmt.lower()}"
            result = {
                "taskType": "imageInference",
                "taskUUID": task["taskUUID"],
                "status": "success",
                "imageUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "seed": task.get("seed", 1234) + index,
                "cost": 0.0013,
            }
            if task.get("outputType", "URL") == "base64Data":
                result["imageBase64Data"] = base64.b64encode(job.images[index]).decode()
            else:
                result["imageURL"] = f"{self.url}/images/{name}"
            results.append(result)
        if job.seen < count:
            results.append(self._processing(job))
        return results

    async def _cdn(self, request: Request) -> Response:
        self.cdn_authorizations.append(request.headers.get("authorization"))
        stem, _, ext = request.path_params["name"].rpartition(".")
        task_uuid, _, index = stem.rpartition("-")
        job = self.jobs.get(task_uuid)
        if job is None or not index.isdigit() or int(index) >= len(job.images):
            return Response("Not Found", 404)
        media_type = next(m for f, (_, m) in _PIL_FORMATS.items() if f.lower() == ext)
        return Response(job.images[int(index)], media_type=media_type)
