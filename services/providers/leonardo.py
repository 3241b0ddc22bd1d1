"""Leonardo.Ai image generation over its REST API (Bearer key).

Wire format (base https://cloud.leonardo.ai/api/rest/v1):
  POST   /generations {"prompt", "modelId", "width", "height", "num_images", ...}
         -> {"sdGenerationJob": {"generationId", "apiCreditCost"}}
  GET    /generations/{id} -> {"generations_by_pk": {"status": "PENDING"|"COMPLETE"|"FAILED",
         "generated_images": [{"id", "url", "nsfw"}], ...}} (null for an unknown id)
  DELETE /generations/{id} -> {"delete_generations_by_pk": {"id"}}
  GET    /me -> {"user_details": [...]} (the health probe)
Errors are Hasura-style {"error", "path", "code"}.

Leonardo documents no cancel call; DELETE of the generation is the closest it offers, so a
cancelled job deletes its pending generation (best effort; whether credits return is
Leonardo's business). The generation id is recorded before polling, so a redelivered job
polls the same generation instead of paying for another one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from genmesh.v1 import job_pb2
from services.providers.adapter import InvalidInput, JobContext, Output, Result, Retryable
from services.providers.base import ConfiguredAdapter, cancel_remote
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP, bearer
from services.providers.params import BOOL, INT, STR, Param, require_multiple
from services.providers.probe import CachedProbe

log = logging.getLogger(__name__)

T2I = job_pb2.TASK_TEXT_TO_IMAGE
# Leonardo's presetStyle values (Alchemy, PhotoReal, Phoenix and the legacy LEONARDO style).
PRESET_STYLES = (
    "ANIME",
    "BOKEH",
    "CINEMATIC",
    "CINEMATIC_CLOSEUP",
    "CREATIVE",
    "DYNAMIC",
    "ENVIRONMENT",
    "FASHION",
    "FILM",
    "FOOD",
    "GENERAL",
    "HDR",
    "ILLUSTRATION",
    "LEONARDO",
    "LONG_EXPOSURE",
    "MACRO",
    "MINIMALISTIC",
    "MONOCHROME",
    "MOODY",
    "NEUTRAL",
    "NONE",
    "PHOTOGRAPHY",
    "PORTRAIT",
    "RAYTRACED",
    "RENDER_3D",
    "RETRO",
    "SKETCH_BW",
    "SKETCH_COLOR",
    "STOCK_PHOTO",
    "VIBRANT",
    "UNPROCESSED",
)
# Above this side length Leonardo allows at most four images per generation.
_LARGE_SIDE = 768
_DEFAULT_MAX_WAIT = 900.0

PARAMS: tuple[Param, ...] = (
    Param("width", INT, "Image width in pixels, a multiple of 8.", 1024, 32, 1536),
    Param("height", INT, "Image height in pixels, a multiple of 8.", 1024, 32, 1536),
    Param(
        "num_images",
        INT,
        f"Images per generation (at most 4 when a side exceeds {_LARGE_SIDE} px).",
        1,
        1,
        8,
    ),
    Param("negative_prompt", STR, "What the images should not show.", None),
    Param("seed", INT, "Fixes the noise for reproducible images.", None, 0, 2147483637),
    Param("guidance_scale", INT, "How strongly the prompt steers the image.", None, 1, 20),
    Param("num_inference_steps", INT, "Denoising steps.", None, 10, 60),
    Param("preset_style", STR, "Leonardo style preset.", None, allowed=PRESET_STYLES),
    Param("alchemy", BOOL, "Leonardo's Alchemy (quality) pipeline, where the model has it.", None),
)


class LeonardoAdapter(ConfiguredAdapter):
    """Text-to-image on Leonardo's generation queue, polled until COMPLETE."""

    family = "leonardo"
    option_keys = ("max_wait",)
    summary = "Leonardo.Ai text-to-image (Phoenix, Lucid, SDXL fine-tunes and more)."
    params = PARAMS
    needs_models = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.http = self.own(
            ProviderHTTP(config, headers={**bearer(config), "Accept": "application/json"})
        )
        # Result images live on Leonardo's CDN: fetched without our key.
        self.files = self.own(ProviderHTTP(config))
        self.probe = CachedProbe(lambda: self.http.json("GET", "/me"))
        self.handlers[T2I] = self._text_to_image
        self._max_wait = config.option_number("max_wait", _DEFAULT_MAX_WAIT)

    async def _text_to_image(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        _check_dimensions(params)
        generation = await ctx.previous_request_id()
        state: dict[str, Any] | None = None
        if generation:
            state = await self._status(generation)
            if state is None or state.get("status") == "FAILED":
                # Nothing paid is lost by starting over: that generation is gone or failed.
                log.info(
                    "%s: generation %s cannot be resumed; creating anew", self.name, generation
                )
                generation, state = "", None
        if not generation:
            generation = await self._create(ctx, params)
            await ctx.record_request_id(generation)
        try:
            images = await self._wait(ctx, generation, state)
            return Result(outputs=[await self._fetch(image, i) for i, image in enumerate(images)])
        except asyncio.CancelledError:
            await cancel_remote(
                f"leonardo generation {generation}",
                lambda: self.http.request("DELETE", f"/generations/{generation}"),
            )
            raise

    async def _create(self, ctx: JobContext, params: Mapping[str, Any]) -> str:
        body: dict[str, Any] = {
            "prompt": ctx.job.spec.prompt,
            "modelId": self.model(T2I),
            "width": params["width"],
            "height": params["height"],
            "num_images": params["num_images"],
            # Leonardo can publish generations to its community feed; jobs stay private.
            "public": False,
        }
        optional = {
            "negative_prompt": params["negative_prompt"],
            "seed": params["seed"],
            "guidance_scale": params["guidance_scale"],
            "num_inference_steps": params["num_inference_steps"],
            "presetStyle": params["preset_style"],
            "alchemy": params["alchemy"],
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        answer = _checked(await self.http.json("POST", "/generations", json=body))
        job = answer.get("sdGenerationJob") or {}
        generation = job.get("generationId")
        if not isinstance(generation, str) or not generation:
            raise Retryable("bad_response", f"{self.name} returned no generationId")
        return generation

    async def _status(self, generation: str) -> dict[str, Any] | None:
        answer = _checked(await self.http.json("GET", f"/generations/{generation}"))
        state = answer.get("generations_by_pk")
        return state if isinstance(state, dict) else None

    async def _wait(
        self, ctx: JobContext, generation: str, state: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        started = time.monotonic()
        while True:
            if state is None:
                state = await self._status(generation)
            if state is None:
                raise Retryable("generation_lost", f"{self.name} no longer knows {generation}")
            status = state.get("status")
            if status == "COMPLETE":
                images = [i for i in state.get("generated_images") or [] if i.get("url")]
                if not images:
                    raise InvalidInput(
                        "no_output", f"{self.name} completed {generation} without any image"
                    )
                return images
            if status == "FAILED":
                # Leonardo gives no reason; a fresh attempt creates a new generation.
                raise Retryable("generation_failed", f"{self.name} generation {generation} failed")
            elapsed = time.monotonic() - started
            if elapsed > self._max_wait:
                raise Retryable(
                    "provider_timeout", f"{self.name} still {status} after {self._max_wait:g} s"
                )
            await ctx.progress(None, f"Leonardo generation {str(status).lower()}")
            await asyncio.sleep(self.config.poll_interval)
            state = None

    async def _fetch(self, image: Mapping[str, Any], index: int) -> Output:
        data, media_type = await self.files.download(str(image["url"]))
        extension = {"image/jpeg": "jpg", "image/webp": "webp"}.get(media_type, "png")
        return Output(data, media_type, f"image-{index}.{extension}")


def _check_dimensions(params: Mapping[str, Any]) -> None:
    require_multiple(params, 8)
    if max(params["width"], params["height"]) > _LARGE_SIDE and params["num_images"] > 4:
        raise InvalidInput(
            "invalid_parameter",
            f"num_images must be <= 4 when width or height exceeds {_LARGE_SIDE}, "
            f"got {params['num_images']}",
        )


def _checked(answer: Any) -> dict[str, Any]:
    """Leonardo's gateway can answer 200 with a Hasura error body; that is a rejection."""
    if not isinstance(answer, dict):
        raise Retryable("bad_response", "Leonardo answered with an unexpected body")
    if answer.get("error"):
        raise InvalidInput("rejected_by_provider", f"Leonardo: {answer['error']}")
    return answer
