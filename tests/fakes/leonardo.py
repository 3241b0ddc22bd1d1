"""A fake Leonardo.Ai REST API on loopback, in its documented wire format.

Under /api/rest/v1 (Bearer key): POST /generations -> {"sdGenerationJob": {"generationId"}},
GET /generations/{id} -> {"generations_by_pk": {...}} going PENDING -> COMPLETE (or FAILED),
DELETE /generations/{id}, GET /me. Finished images are real PNGs served from /cdn/..., the
stand-in for Leonardo's CDN. Errors are Hasura-style {"error", "path", "code"}."""

from __future__ import annotations

import asyncio
import io
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tests.fakes.server import Faults, Injected

PHOENIX = "de7d3faf-762f-48e0-b3b7-9d0ac3a3fcf3"
DIFFUSION_XL = "b24e16ff-06e3-43eb-8d33-4416c2d75876"
API = "/api/rest/v1"


def _error(status: int, message: str, code: str, path: str = "$") -> JSONResponse:
    return JSONResponse({"error": message, "path": path, "code": code}, status)


def png(width: int, height: int, label: str) -> bytes:
    """A real PNG: a colour gradient with the label written on it."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    ImageDraw.Draw(image).text((4, 4), label[:40], fill=(255, 64, 64))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Generation:
    id: str
    body: dict[str, Any]
    polls_left: int
    fails: bool
    images: list[bytes] = field(default_factory=list)


@dataclass
class LeonardoFake:
    """Configurable fake: polls before a generation completes, failures, latency."""

    api_key: str = "leo-test-key"
    url: str = ""
    models: set[str] = field(default_factory=lambda: {PHOENIX, DIFFUSION_XL})
    # Status polls answered PENDING before a generation turns COMPLETE.
    pending_polls: int = 2
    # How many of the next generations end FAILED.
    fail_next: int = 0
    # Seconds every API answer is delayed.
    latency: float = 0.0
    faults: Faults = field(default_factory=Faults)
    # Failures answered to status polls only (after `faults`), e.g. an outage mid-generation.
    poll_failures: list[Injected] = field(default_factory=list)
    generations: dict[str, Generation] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    # Authorization headers the CDN saw on downloads (a leaked key would show up here).
    cdn_authorizations: list[str | None] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + API

    def existing(self, body: dict[str, Any], *, pending_polls: int = 0, fails: bool = False) -> str:
        """A generation created earlier (say by a worker that died); returns its id."""
        generation = Generation(uuid.uuid4().hex, body, pending_polls, fails)
        self.generations[generation.id] = generation
        return generation.id

    def app(self) -> Starlette:
        api = [
            Route("/generations", self._create, methods=["POST"]),
            Route("/generations/{id}", self._get, methods=["GET"]),
            Route("/generations/{id}", self._delete, methods=["DELETE"]),
            Route("/me", self._me),
        ]
        return Starlette(
            routes=[Mount(API, routes=api), Route("/cdn/{id}/{index:int}.png", self._cdn)]
        )

    async def _guard(self, request: Request) -> Response | None:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Authentication hook unauthorized this request", "access-denied")
        return None

    async def _me(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        user = {"id": "fake-user", "username": "fake"}
        return JSONResponse({"user_details": [{"user": user, "apiConcurrencySlots": 10}]})

    async def _create(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        body = await request.json()
        if problem := self._invalid(body):
            return _error(400, problem[1], "validation-failed", problem[0])
        generation = Generation(
            uuid.uuid4().hex, body, self.pending_polls, fails=self.fail_next > 0
        )
        self.fail_next = max(0, self.fail_next - 1)
        self.generations[generation.id] = generation
        job = {"generationId": generation.id, "apiCreditCost": 8 * body.get("num_images", 1)}
        return JSONResponse({"sdGenerationJob": job})

    def _invalid(self, body: Any) -> tuple[str, str] | None:
        base = "$.selectionSet.sdGenerationJob.args.arg1"
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return f"{base}.prompt", "expected a String for type String! but found null"
        if body.get("modelId") not in self.models:
            return f"{base}.modelId", f"model {body.get('modelId')} not found"
        for side in ("width", "height"):
            value = body.get(side, 1024)
            if not isinstance(value, int) or not 32 <= value <= 1536 or value % 8:
                return f"{base}.{side}", f"{side} must be between 32 and 1536 and divisible by 8"
        if not 1 <= body.get("num_images", 1) <= 8:
            return f"{base}.num_images", "num_images must be between 1 and 8"
        return None

    async def _get(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        if self.poll_failures:
            return self.poll_failures.pop(0).response()
        generation = self.generations.get(request.path_params["id"])
        if generation is None:
            return JSONResponse({"generations_by_pk": None})
        body = generation.body
        state: dict[str, Any] = {
            "id": generation.id,
            "prompt": body.get("prompt", ""),
            "modelId": body.get("modelId"),
            "imageWidth": body.get("width", 1024),
            "imageHeight": body.get("height", 1024),
            "public": body.get("public", False),
            "generated_images": [],
        }
        if generation.polls_left > 0:
            generation.polls_left -= 1
            state["status"] = "PENDING"
        elif generation.fails:
            state["status"] = "FAILED"
        else:
            state["status"] = "COMPLETE"
            if not generation.images:
                size = (state["imageWidth"], state["imageHeight"])
                count = body.get("num_images", 1)
                label = state["prompt"]
                generation.images = [png(*size, f"{label} #{i}") for i in range(count)]
            state["generated_images"] = [
                {
                    "id": f"{generation.id}-{i}",
                    "url": f"{self.url}/cdn/{generation.id}/{i}.png",
                    "nsfw": False,
                    "likeCount": 0,
                }
                for i in range(len(generation.images))
            ]
        return JSONResponse({"generations_by_pk": state})

    async def _delete(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        generation = self.generations.pop(request.path_params["id"], None)
        if generation is None:
            return JSONResponse({"delete_generations_by_pk": None})
        self.deleted.append(generation.id)
        return JSONResponse({"delete_generations_by_pk": {"id": generation.id}})

    async def _cdn(self, request: Request) -> Response:
        self.cdn_authorizations.append(request.headers.get("authorization"))
        generation = self.generations.get(request.path_params["id"])
        index = request.path_params["index"]
        if generation is None or index >= len(generation.images):
            return Response("<Error><Code>NoSuchKey</Code></Error>", 404)
        return Response(generation.images[index], media_type="image/png")
