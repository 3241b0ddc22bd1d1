"""Image-to-image with Pillow on this machine: resize and crop, and a handful of real looks
(sketch, sepia, posterize, cartoon, blur). A small preview of the result comes first."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from genmesh.v1 import job_pb2
from services.providers.adapter import InvalidInput, JobContext, Output, Result
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.offline import styles
from services.providers.params import INT, NUM, STR, Param

I2I = job_pb2.TASK_IMAGE_TO_IMAGE
# Largest input, in pixels, unless the catalog's options.max_pixels says otherwise.
DEFAULT_MAX_PIXELS = 40_000_000


class PillowAdapter(ConfiguredAdapter):
    """The `pillow` family: every transform runs on a thread, so the worker stays responsive."""

    family = "pillow"
    option_keys = ("max_pixels",)
    summary = "Offline image-to-image with Pillow: sketch, sepia, posterize, cartoon, blur, resize."
    offline = True
    params = (
        Param(
            "style",
            STR,
            "The look: sketch (pencil), sepia, posterize, cartoon (flat colours, outlines), "
            "blur, or resize (the geometry alone). Unset: the first of these the prompt names "
            '("in sepia"), else sketch.',
            None,
            allowed=styles.STYLES,
            tasks=(I2I,),
        ),
        Param(
            "radius",
            NUM,
            "Blur radius in pixels (blur, sketch), or smoothing (cartoon).",
            4.0,
            0.1,
            50,
            tasks=(I2I,),
        ),
        Param(
            "bits",
            INT,
            "Bits kept per colour channel (posterize, cartoon): fewer, flatter.",
            3,
            1,
            8,
            tasks=(I2I,),
        ),
        Param(
            "width",
            INT,
            "Output width; with only one of width and height the other keeps the proportions; "
            "neither keeps the input's size.",
            None,
            1,
            4096,
            tasks=(I2I,),
        ),
        Param("height", INT, "Output height (see width).", None, 1, 4096, tasks=(I2I,)),
        Param(
            "fit",
            STR,
            "With both width and height: cover (crop to fill), contain (fit inside, may be "
            "smaller), pad (fit inside, padded), stretch.",
            "cover",
            allowed=styles.FITS,
            tasks=(I2I,),
        ),
        Param("format", STR, "Output format.", "png", allowed=tuple(styles.FORMATS), tasks=(I2I,)),
    )

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._max_pixels = config.option_whole("max_pixels", DEFAULT_MAX_PIXELS)
        self.handlers[I2I] = self._transform

    async def check(self) -> str:
        """Always usable: Pillow is one of genmesh's own dependencies."""
        return ""

    async def _transform(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        if not ctx.job.spec.input_asset_ids:
            raise InvalidInput("missing_input", "image-to-image needs one input image")
        _, data = await ctx.read_input(0)
        look = styles.Look(**{**p, "style": p["style"] or _named_style(ctx.job.spec.prompt)})
        try:
            image = await asyncio.to_thread(styles.open_image, data, self._max_pixels)
        except styles.ImageError as exc:
            raise InvalidInput("invalid_image", str(exc)) from exc
        # A cancelled job stops at the next await; a step already on its thread runs out
        # (bounded by max_pixels and the 4096-pixel output limit).
        preview = await asyncio.to_thread(styles.render_preview, image, look)
        await ctx.preview(Output(preview, "image/png", "preview.png"))
        await ctx.progress(50.0, f"preview ready; rendering {look.style} at full size")
        full = await asyncio.to_thread(styles.render, image, look)
        name = f"{look.style}.{'jpg' if look.format == 'jpeg' else look.format}"
        return Result([Output(full, styles.FORMATS[look.format], name)])


def _named_style(prompt: str) -> str:
    """The first style the prompt names, else sketch: the prompt is all a caller who set no
    parameters said about the look they want."""
    words = re.findall(r"[a-z]+", prompt.lower())
    return next((word for word in words if word in styles.STYLES), "sketch")
