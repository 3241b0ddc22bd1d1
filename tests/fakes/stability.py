"""A fake Stability AI Stable Image (v2beta) API on loopback, in its documented wire format.

POST /v2beta/stable-image/generate/{core|ultra|sd3}: multipart/form-data, Bearer key,
Accept image/* (bytes plus finish-reason and seed headers) or application/json
({"image": base64, "finish_reason", "seed"}). GET /v1/user/account. Images are real
(Pillow). Errors are {"id", "name", "errors": [...]}; prompts containing a refused word get
403 content_moderation, prompts containing a filtered word come back CONTENT_FILTERED."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFilter
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.server import Faults

RATIOS = {
    "16:9": (16, 9),
    "1:1": (1, 1),
    "21:9": (21, 9),
    "2:3": (2, 3),
    "3:2": (3, 2),
    "4:5": (4, 5),
    "5:4": (5, 4),
    "9:16": (9, 16),
    "9:21": (9, 21),
}
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
PRESETS = {
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
}
SD3_MODELS = {"sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium"}


def _error(status: int, name: str, *errors: str) -> JSONResponse:
    return JSONResponse({"id": uuid.uuid4().hex, "name": name, "errors": list(errors)}, status)


@dataclass
class StabilityFake:
    """Configurable fake: image size, generation time, moderation words."""

    api_key: str = "sk-stability-test"
    url: str = ""
    # Long side of generated images (the real API makes ~1 megapixel; tests want small).
    long_side: int = 96
    # Seconds a generation takes; a client that hangs up meanwhile is counted.
    latency: float = 0.0
    refused_words: set[str] = field(default_factory=lambda: {"forbidden"})
    filtered_words: set[str] = field(default_factory=lambda: {"blurme"})
    faults: Faults = field(default_factory=Faults)
    # (endpoint, form fields without the image, image bytes or None) per generation.
    generations: list[tuple[str, dict[str, str], bytes | None]] = field(default_factory=list)
    abandoned: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2beta/stable-image/generate/{endpoint}", self._generate, methods=["POST"]),
                Route("/v1/user/account", self._account),
            ]
        )

    async def _guard(self, request: Request) -> Response | None:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "unauthorized", "authorization: invalid or missing header value")
        return None

    async def _account(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        return JSONResponse({"id": "user-fake", "email": "fake@example.com", "organizations": []})

    async def _generate(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        endpoint = request.path_params["endpoint"]
        if endpoint not in ("core", "ultra", "sd3"):
            return _error(404, "not_found", f"route not found: {request.url.path}")
        accept = request.headers.get("accept", "image/*")
        if accept not in ("image/*", "application/json"):
            return _error(400, "bad_request", "accept: must be image/* or application/json")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(400, "bad_request", "content-type: must be multipart/form-data")
        # The context manager closes uploaded files' spooled temporaries.
        async with request.form() as form:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            upload = form.get("image")
            image = await upload.read() if isinstance(upload, UploadFile) else None
        problems = self._problems(endpoint, fields, image)
        if problems:
            return _error(400, "bad_request", *problems)
        prompt = fields["prompt"].lower()
        if any(word in prompt for word in self.refused_words):
            return _error(
                403,
                "content_moderation",
                "Your request was flagged by our content moderation system, as a result your "
                "request was denied and you were not charged.",
            )
        self.generations.append((endpoint, fields, image))
        if not await self._work(request):
            return Response(status_code=499)
        seed = int(fields.get("seed") or 0) or 1234567
        filtered = any(word in prompt for word in self.filtered_words)
        fmt = fields.get("output_format", "png")
        data = self._render(fields, image, fmt, blurred=filtered)
        finish = "CONTENT_FILTERED" if filtered else "SUCCESS"
        if accept == "application/json":
            encoded = base64.b64encode(data).decode()
            return JSONResponse({"image": encoded, "finish_reason": finish, "seed": seed})
        headers = {"finish-reason": finish, "seed": str(seed)}
        return Response(data, media_type=f"image/{fmt}", headers=headers)

    async def _work(self, request: Request) -> bool:
        """Spend `latency` generating; False if the client hung up meanwhile."""
        for _ in range(int(self.latency / 0.01)):
            if await request.is_disconnected():
                self.abandoned += 1
                return False
            await asyncio.sleep(0.01)
        return True

    def _problems(self, endpoint: str, fields: dict[str, str], image: bytes | None) -> list[str]:
        problems = []
        prompt = fields.get("prompt", "")
        if not 1 <= len(prompt) <= 10000:
            problems.append("prompt: is required and must be 1-10000 characters")
        if fields.get("aspect_ratio", "1:1") not in RATIOS:
            problems.append(f"aspect_ratio: must be one of {', '.join(RATIOS)}")
        if fields.get("output_format", "png") not in FORMATS:
            problems.append("output_format: must be one of jpeg, png, webp")
        seed = fields.get("seed", "0")
        if not seed.isdigit() or int(seed) > 4294967294:
            problems.append("seed: must be an integer between 0 and 4294967294")
        if endpoint == "core" and fields.get("style_preset", "enhance") not in PRESETS:
            problems.append("style_preset: is not a supported preset")
        if endpoint == "core" and image is not None:
            problems.append("image: is not a supported field")
        if endpoint == "sd3":
            if fields.get("model", "sd3.5-large") not in SD3_MODELS:
                problems.append(f"model: must be one of {', '.join(sorted(SD3_MODELS))}")
            i2i = fields.get("mode", "text-to-image") == "image-to-image"
            if i2i and (image is None or "strength" not in fields):
                problems.append("image, strength: are required for mode image-to-image")
            if not i2i and image is not None:
                problems.append("image: requires mode image-to-image")
        if "strength" in fields and not 0 <= float(fields["strength"]) <= 1:
            problems.append("strength: must be between 0 and 1")
        if image is not None:
            try:
                Image.open(io.BytesIO(image)).verify()
            except Exception:
                problems.append("image: could not be decoded")
        return problems

    def _render(
        self, fields: dict[str, str], image: bytes | None, fmt: str, blurred: bool
    ) -> bytes:
        if image is not None:
            # Image-to-image keeps the input's size, as Stability does.
            picture = Image.open(io.BytesIO(image)).convert("RGB")
        else:
            w, h = RATIOS[fields.get("aspect_ratio", "1:1")]
            scale = self.long_side / max(w, h)
            picture = Image.new("RGB", (round(w * scale), round(h * scale)), (90, 40, 140))
        ImageDraw.Draw(picture).text((2, 2), fields["prompt"][:30], fill=(255, 255, 0))
        if blurred:
            picture = picture.filter(ImageFilter.GaussianBlur(8))
        buffer = io.BytesIO()
        picture.save(buffer, FORMATS[fmt])
        return buffer.getvalue()
