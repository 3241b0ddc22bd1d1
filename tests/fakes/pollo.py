"""A fake Pollo.ai platform API on loopback, in the wire format its docs describe.

Under /api/platform (x-api-key header): POST /generation/{vendor}/{model} creates a task and
answers {"code": "SUCCESS", "data": {"taskId", "status": "waiting"}}; GET
/generation/{taskId}/status reports generations[0].status waiting -> processing -> succeed
(or failed, with failMsg) and, once done, a url to an MP4 served from /storage/..., the
stand-in for Pollo's CDN. Errors are {"message", "code"} with "issues" for bad input."""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tests.fakes.server import Faults

API = "/api/platform"
POLLO_1_6 = "pollo/pollo-v1-6"


def _error(status: int, code: str, message: str, issues: Sequence[str] = ()) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "code": code}
    if issues:
        body["issues"] = [{"message": issue} for issue in issues]
    return JSONResponse(body, status)


def mp4(seconds: int, label: str) -> bytes:
    """MP4-shaped bytes: ftyp, a minimal moov/mvhd with the duration, and an mdat payload."""

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    ftyp = box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41")
    timescale = 1000
    mvhd = box(
        b"mvhd",
        struct.pack(">B3xIIII", 0, 0, 0, timescale, seconds * timescale)
        + struct.pack(">IH10x", 0x00010000, 0x0100)
        + struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
        + bytes(24)
        + struct.pack(">I", 2),
    )
    mdat = box(b"mdat", (label.encode() + b"\0") * 64)
    return ftyp + box(b"moov", mvhd) + mdat


@dataclass
class Task:
    id: str
    model: str
    input: dict[str, Any]
    waiting_polls: int
    processing_polls: int
    fail_message: str = ""
    video: bytes = b""


@dataclass
class PolloFake:
    """Configurable fake: polls spent waiting and processing, failing tasks, latency."""

    api_key: str = "pollo_test_key"
    url: str = ""
    models: set[str] = field(default_factory=lambda: {POLLO_1_6, "kling-ai/kling-v2-1"})
    waiting_polls: int = 1
    processing_polls: int = 2
    # failMsg for the next tasks that fail, consumed one per created task.
    failures: list[str] = field(default_factory=list)
    # Pollo's create answer comes in a {"code", "message", "data"} envelope; status does not.
    wrap_create: bool = True
    wrap_status: bool = False
    latency: float = 0.0
    faults: Faults = field(default_factory=Faults)
    tasks: dict[str, Task] = field(default_factory=dict)
    cdn_api_keys: list[str | None] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + API

    def existing(self, model: str, job_input: dict[str, Any], **state: Any) -> str:
        """A task created earlier (say by a worker that died); returns its taskId."""
        polls = {"waiting_polls": 0, "processing_polls": 1} | state
        task = Task(uuid.uuid4().hex[:25], model, job_input, **polls)
        self.tasks[task.id] = task
        return task.id

    def app(self) -> Starlette:
        api = [
            Route("/generation/{task_id}/status", self._status, methods=["GET"]),
            Route("/generation/{vendor}/{model}", self._create, methods=["POST"]),
        ]
        return Starlette(
            routes=[Mount(API, routes=api), Route("/storage/{task_id}.mp4", self._storage)]
        )

    async def _guard(self, request: Request) -> Response | None:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "UNAUTHORIZED", "Invalid API key")
        return None

    async def _create(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        model = f"{request.path_params['vendor']}/{request.path_params['model']}"
        if model not in self.models:
            return _error(404, "NOT_FOUND", "Not found")
        body = await request.json()
        job_input = body.get("input") if isinstance(body, dict) else None
        if not isinstance(job_input, dict):
            return _error(400, "BAD_REQUEST", "Invalid input", ["input: Required"])
        issues = self._issues(job_input)
        if issues:
            return _error(400, "BAD_REQUEST", "Invalid input", issues)
        task = Task(
            uuid.uuid4().hex[:25],
            model,
            job_input,
            self.waiting_polls,
            self.processing_polls,
            self.failures.pop(0) if self.failures else "",
        )
        self.tasks[task.id] = task
        payload: dict[str, Any] = {"taskId": task.id, "status": "waiting"}
        if self.wrap_create:
            payload = {"code": "SUCCESS", "message": "success", "data": payload}
        return JSONResponse(payload)

    def _issues(self, job_input: dict[str, Any]) -> list[str]:
        issues = []
        image = job_input.get("image")
        if image is not None and not _usable_image(image):
            issues.append("input.image: must be an http(s) URL or a base64 data URI of an image")
        if image is None and not job_input.get("prompt"):
            issues.append("input.prompt: Required when no image is given")
        if job_input.get("resolution", "480p") not in ("480p", "720p", "1080p"):
            issues.append(
                "input.resolution: Invalid enum value. Expected '480p' | '720p' | '1080p'"
            )
        if job_input.get("length", 5) not in (5, 10):
            issues.append("input.length: Invalid enum value. Expected 5 | 10")
        return issues

    async def _status(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        task = self.tasks.get(request.path_params["task_id"])
        if task is None:
            return _error(404, "NOT_FOUND", "Not found")
        generation: dict[str, Any] = {"id": f"{task.id}-0", "mediaType": "video"}
        if task.waiting_polls > 0:
            task.waiting_polls -= 1
            generation["status"] = "waiting"
        elif task.processing_polls > 0:
            task.processing_polls -= 1
            generation["status"] = "processing"
        elif task.fail_message:
            generation |= {"status": "failed", "failMsg": task.fail_message}
        else:
            if not task.video:
                task.video = mp4(int(task.input.get("length", 5)), task.input.get("prompt", ""))
            generation |= {"status": "succeed", "url": f"{self.url}/storage/{task.id}.mp4"}
        payload: dict[str, Any] = {"taskId": task.id, "credit": 10, "generations": [generation]}
        if self.wrap_status:
            payload = {"code": "SUCCESS", "message": "success", "data": payload}
        return JSONResponse(payload)

    async def _storage(self, request: Request) -> Response:
        self.cdn_api_keys.append(request.headers.get("x-api-key"))
        task = self.tasks.get(request.path_params["task_id"])
        if task is None or not task.video:
            return Response("Not Found", 404)
        return Response(task.video, media_type="video/mp4")


def _usable_image(image: Any) -> bool:
    if not isinstance(image, str):
        return False
    if image.startswith(("http://", "https://")):
        return True
    header, _, data = image.partition(",")
    if not (header.startswith("data:image/") and header.endswith(";base64")):
        return False
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return raw.startswith((b"\x89PNG", b"\xff\xd8", b"RIFF", b"GIF8"))
