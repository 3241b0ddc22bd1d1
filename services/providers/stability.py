"""Stability AI Stable Image (v2beta) generation over its REST API (Bearer key).

Wire format (base https://api.stability.ai):
  POST /v2beta/stable-image/generate/{core|ultra|sd3}, multipart/form-data fields prompt,
       aspect_ratio, output_format, seed, negative_prompt, style_preset (core); sd3 also
       model (sd3.5-large, ...) and mode=image-to-image with image + strength; ultra takes
       image + strength. Accept: image/* answers the bytes with `finish-reason` and `seed`
       headers; Accept: application/json answers {"image": base64, "finish_reason", "seed"}.
       finish_reason CONTENT_FILTERED means the output was blocked.
  GET  /v1/user/account (the health probe).
Errors are {"id", "name", "errors": [...]}; 403 with name content_moderation is a refused
prompt or image, not a bad key.

Generation is synchronous: there is no request id to record or resume, and closing the
connection is how a cancelled job stops (Stability documents no cancel call)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import httpx

from genmesh.v1 import job_pb2
from services.providers.adapter import (
    Fatal,
    InvalidInput,
    JobContext,
    Output,
    Result,
    Retryable,
)
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP, bearer, error_message
from services.providers.params import INT, NUM, STR, Param
from services.providers.probe import CachedProbe

T2I = job_pb2.TASK_TEXT_TO_IMAGE
I2I = job_pb2.TASK_IMAGE_TO_IMAGE
ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
STYLE_PRESETS = (
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
)
# Catalog model -> (endpoint, `model` form field). "sd3.5-large" etc. pick an SD3 variant.
_ENDPOINTS = {"core": ("core", ""), "ultra": ("ultra", ""), "sd3": ("sd3", "")}
_SD3_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium")
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

PARAMS: tuple[Param, ...] = (
    Param(
        "aspect_ratio",
        STR,
        "Aspect ratio of the image.",
        "1:1",
        allowed=ASPECT_RATIOS,
        tasks=(T2I,),
    ),
    Param("output_format", STR, "Image file format.", "png", allowed=OUTPUT_FORMATS),
    Param("negative_prompt", STR, "What the image should not show.", None),
    Param("seed", INT, "Fixes the noise; 0 picks a random seed.", 0, 0, 4294967294),
    Param(
        "style_preset",
        STR,
        "Guides the image towards a style (Stable Image Core only).",
        None,
        allowed=STYLE_PRESETS,
    ),
    Param(
        "strength",
        NUM,
        "How far the result may move away from the input image (0 keeps it, 1 ignores it).",
        0.7,
        0,
        1,
        tasks=(I2I,),
    ),
)


class StabilityAdapter(ConfiguredAdapter):
    """Stable Image Core, Ultra and SD3.5: text-to-image and image-to-image in one request."""

    family = "stability"
    option_keys = ("json_responses",)
    summary = "Stability AI Stable Image: Core, Ultra and Stable Diffusion 3.5."
    params = PARAMS
    needs_models = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._as_json = config.option_flag("json_responses", False)
        self.http = self.own(ProviderHTTP(config, headers=bearer(config)))
        self.probe = CachedProbe(lambda: self.http.json("GET", "/v1/user/account"))
        self.handlers[T2I] = self._text_to_image
        self.handlers[I2I] = self._image_to_image

    async def _text_to_image(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        endpoint, fields = self._fields(ctx, params, T2I)
        fields["aspect_ratio"] = params["aspect_ratio"]
        return await self._generate(endpoint, fields, None, params["output_format"])

    async def _image_to_image(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        endpoint, fields = self._fields(ctx, params, I2I)
        if endpoint == "core":
            raise Fatal(
                "misconfigured", f"{self.name}: Stable Image Core has no image-to-image mode"
            )
        if endpoint == "sd3":
            fields["mode"] = "image-to-image"
        fields["strength"] = params["strength"]
        asset, data = await ctx.read_input()
        image = ("input", data, asset.media_type or "application/octet-stream")
        return await self._generate(endpoint, fields, image, params["output_format"])

    def _fields(
        self, ctx: JobContext, params: Mapping[str, Any], task: job_pb2.Task.ValueType
    ) -> tuple[str, dict[str, Any]]:
        model = self.model(task)
        if model in _ENDPOINTS:
            endpoint, variant = _ENDPOINTS[model]
        elif model in _SD3_MODELS:
            endpoint, variant = "sd3", model
        else:
            known = ", ".join([*_ENDPOINTS, *_SD3_MODELS])
            raise Fatal("misconfigured", f"{self.name}: unknown model {model!r} (known: {known})")
        fields: dict[str, Any] = {
            "prompt": ctx.job.spec.prompt,
            "output_format": params["output_format"],
            "seed": params["seed"],
        }
        if variant:
            fields["model"] = variant
        if params["negative_prompt"]:
            fields["negative_prompt"] = params["negative_prompt"]
        if params["style_preset"]:
            if endpoint != "core":
                raise InvalidInput(
                    "invalid_parameter",
                    f"style_preset is only offered by Stable Image Core, not {model}",
                )
            fields["style_preset"] = params["style_preset"]
        return endpoint, fields

    async def _generate(
        self,
        endpoint: str,
        fields: Mapping[str, Any],
        image: tuple[str, bytes, str] | None,
        output_format: str,
    ) -> Result:
        # Every field goes as a multipart part: Stability rejects url-encoded bodies.
        parts: dict[str, Any] = {k: (None, str(v)) for k, v in fields.items()}
        if image is not None:
            parts["image"] = image
        try:
            response = await self.http.client.post(
                f"/v2beta/stable-image/generate/{endpoint}",
                files=parts,
                headers={"Accept": "application/json" if self._as_json else "image/*"},
            )
        except httpx.HTTPError as exc:
            raise self.http.transport_error(exc) from None
        if not response.is_success:
            raise self._rejection(response)
        if self._as_json:
            data, finish_reason = self._decoded(response)
        else:
            data, finish_reason = response.content, response.headers.get("finish-reason", "")
        if finish_reason == "CONTENT_FILTERED":
            raise InvalidInput(
                "content_filtered", f"{self.name} filtered the generated image (content moderation)"
            )
        media_type = response.headers.get("content-type", "").split(";")[0]
        if not media_type.startswith("image/"):
            media_type = _MEDIA[output_format]
        return Result(outputs=[Output(data, media_type, f"image.{_EXTENSIONS[output_format]}")])

    def _decoded(self, response: httpx.Response) -> tuple[bytes, str]:
        try:
            body = response.json()
            return base64.b64decode(body["image"], validate=True), str(body.get("finish_reason"))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise Retryable("bad_response", f"{self.name} sent an unreadable image") from None

    def _rejection(self, response: httpx.Response) -> Exception:
        """A refused prompt or image is the request's fault, not the key's."""
        try:
            name = response.json().get("name")
        except (ValueError, AttributeError):
            name = None
        if response.status_code == 403 and name == "content_moderation":
            reason = self.http.scrub(error_message(response))
            return InvalidInput("content_moderation", f"{self.name} refused the request: {reason}")
        return self.http.status_error(response)
