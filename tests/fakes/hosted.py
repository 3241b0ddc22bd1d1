"""What the fakes of hosted, queued providers (fal, Replicate, RunPod) share: failures scripted
per route, a file host for result URLs, and a clock that moves a request through its queue.

A fake is an ordinary ASGI app with a configurable key, latency and timings, so benchmarks
and the demo mode can run it as well as tests."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from services.providers.sandbox import media
from tests.fakes.server import Injected, Recorded


class Script:
    """Failures queued for one route ("submit", "status", ...) or for whichever request comes
    next, and a record of every request a fake served, by route."""

    def __init__(self, latency: float = 0.0) -> None:
        # Seconds every answer is held back (a slow provider); Injected.delay adds to it.
        self.latency = latency
        self.requests: list[tuple[str, Recorded]] = []
        self._queues: dict[str | None, deque[Injected]] = {}

    def inject(self, *failures: Injected, route: str | None = None) -> None:
        self._queues.setdefault(route, deque()).extend(failures)

    def calls(self, route: str) -> list[Recorded]:
        return [r for name, r in self.requests if name == route]

    async def check(self, route: str, request: Request) -> Response | None:
        """Record the request; answer with the next failure scripted for it, if any."""
        body = await request.body()
        self.requests.append(
            (route, Recorded(request.method, request.url.path, dict(request.headers), body))
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        queue = self._queues.get(route) or self._queues.get(None)
        if not queue:
            return None
        failure = queue.popleft()
        if failure.delay:
            await asyncio.sleep(failure.delay)
        return failure.response()


class FileHost:
    """Result files served at GET {prefix}/{name}, like a provider's CDN (no key needed)."""

    def __init__(self, prefix: str = "/files", base_url: str = "") -> None:
        self.prefix = prefix
        # Where result URLs point; empty means the fake's own origin. Point it at a second
        # server of the same app to play a CDN on another origin.
        self.base_url = base_url
        self._files: dict[str, tuple[bytes, str]] = {}

    def put(self, data: bytes, media_type: str, suffix: str, request: Request) -> str:
        """Store a file; its public URL (on the origin `request` came to, unless base_url)."""
        return self.url(self.put_named(data, media_type, suffix), str(request.base_url))

    def put_named(self, data: bytes, media_type: str, suffix: str) -> str:
        """Store a file; its name."""
        name = f"{uuid.uuid4().hex}{suffix}"
        self._files[name] = (data, media_type)
        return name

    def url(self, name: str, origin: str) -> str:
        return f"{(self.base_url or origin).rstrip('/')}{self.prefix}/{name}"

    def serve(self, name: str) -> Response:
        if name not in self._files:
            return Response("not found", 404)
        data, media_type = self._files[name]
        return Response(data, 200, media_type=media_type)


@dataclass
class Clock:
    """When a request leaves the queue and when it is done, from its creation time."""

    queue_seconds: float = 0.0
    run_seconds: float = 0.0
    # Requests ahead of a new one at creation; the position counts down over queue_seconds.
    queue_ahead: int = 0
    created: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.created

    def phase(self) -> str:
        """ "queued", "running" or "done"."""
        elapsed = self.elapsed()
        if elapsed < self.queue_seconds:
            return "queued"
        if elapsed < self.queue_seconds + self.run_seconds:
            return "running"
        return "done"

    def position(self) -> int:
        if not self.queue_seconds:
            return 0
        left = max(0.0, 1 - self.elapsed() / self.queue_seconds)
        return round(self.queue_ahead * left)

    def fraction(self) -> float:
        """How far the run is, 0..1."""
        if not self.run_seconds:
            return 1.0
        return min(1.0, max(0.0, (self.elapsed() - self.queue_seconds) / self.run_seconds))


def picture(prompt: str, seed: int, width: int, height: int, fmt: str = "png") -> bytes:
    """A real image (Pillow) determined by its inputs, as PNG, JPEG or WebP."""
    return convert(media.text_to_image(prompt or "untitled", seed, width, height), fmt)


def convert(png: bytes, fmt: str) -> bytes:
    """A PNG re-encoded as png, jpeg/jpg or webp."""
    if fmt == "png":
        return png
    out = io.BytesIO()
    kind = "JPEG" if fmt in ("jpg", "jpeg") else fmt.upper()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, kind)
    return out.getvalue()


IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
