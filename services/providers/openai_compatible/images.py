"""Images: generations (text-to-image) and edits (image-to-image), base64 or URL answers,
with partial images streamed as previews when asked for."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from services.providers.adapter import InvalidInput, JobContext, Output, Result, Retryable
from services.providers.http import ProviderHTTP
from services.providers.openai_compatible.client import OpenAIHTTP
from services.providers.openai_compatible.options import Options
from services.providers.openai_compatible.params import image_model
from services.providers.streams import iter_sse
from services.storage.probe import sniff_media_type

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class Images:
    """Runs image jobs against `api`; result URLs are fetched with `files`, which carries no
    key, because they may point at another host (a CDN)."""

    def __init__(self, api: OpenAIHTTP, files: ProviderHTTP, options: Options) -> None:
        self._api = api
        self._files = files
        self._options = options

    async def generate(self, ctx: JobContext, model: str, params: Mapping[str, Any]) -> Result:
        """POST /images/generations."""
        body = self._fields(model, params)
        body["prompt"] = ctx.job.spec.prompt
        if body.get("stream"):
            async with self._api.stream("POST", "/images/generations", json=body) as response:
                return await self._streamed(ctx, response)
        return await self._answer(await self._api.json("POST", "/images/generations", json=body))

    async def edit(self, ctx: JobContext, model: str, params: Mapping[str, Any]) -> Result:
        """POST /images/edits (multipart) with the job's input image."""
        prompt = ctx.job.spec.prompt
        if not prompt:
            raise InvalidInput(
                "missing_prompt", f"image-to-image on {self._api.name} needs a prompt"
            )
        asset, data = await ctx.read_input(0)
        media_type = sniff_media_type(data[:16]) or asset.media_type or "image/png"
        extension = _EXTENSIONS.get(media_type, "png")
        form = {k: _form_value(v) for k, v in self._fields(model, params).items()}
        form["prompt"] = prompt
        files = {"image": (f"image.{extension}", data, media_type)}
        if form.get("stream") == "true":
            async with self._api.stream(
                "POST", "/images/edits", data=form, files=files
            ) as response:
                return await self._streamed(ctx, response)
        return await self._answer(
            await self._api.json("POST", "/images/edits", data=form, files=files)
        )

    def _fields(self, model: str, params: Mapping[str, Any]) -> dict[str, Any]:
        limits = image_model(model)
        limits.check(params)
        fields: dict[str, Any] = {"model": model, "n": params["n"], "size": params["size"]}
        for name in ("quality", "background", "output_format", "style"):
            if params.get(name) is not None:
                fields[name] = params[name]
        if not limits.gpt_image:
            fields["response_format"] = self._options.image_response_format
        if params.get("partial_images"):
            fields["stream"] = True
            fields["partial_images"] = params["partial_images"]
        return fields

    async def _answer(self, body: Any) -> Result:
        items = body.get("data") if isinstance(body, dict) else None
        if not items:
            raise Retryable("bad_response", f"{self._api.name} answered without images")
        return Result(outputs=[await self._output(item, i) for i, item in enumerate(items)])

    async def _streamed(self, ctx: JobContext, response: Any) -> Result:
        """SSE: `*.partial_image` events become previews, `*.completed` events the outputs."""
        outputs: list[Output] = []
        async for event in iter_sse(response):
            try:
                data = json.loads(event.data)
            except ValueError:
                raise Retryable(
                    "bad_response", f"{self._api.name} streamed an event that is not JSON"
                ) from None
            if not isinstance(data, dict):
                continue
            if "error" in data:
                raise self._api.stream_error(data["error"])
            kind = str(data.get("type") or event.event)
            if kind.endswith(".partial_image"):
                index = data.get("partial_image_index", 0)
                preview = _decode(self._api.name, data.get("b64_json"), f"preview-{index}")
                await ctx.preview(preview)
            elif kind.endswith(".completed"):
                outputs.append(await self._output(data, len(outputs)))
        if not outputs:
            raise Retryable("stream_interrupted", f"{self._api.name} ended before the image")
        return Result(outputs=outputs)

    async def _output(self, item: Any, index: int) -> Output:
        if isinstance(item, dict) and item.get("b64_json"):
            return _decode(self._api.name, item["b64_json"], f"image-{index + 1}")
        if isinstance(item, dict) and item.get("url"):
            data, media_type = await self._files.download(str(item["url"]))
            media_type = sniff_media_type(data[:16]) or media_type
            if not media_type.startswith("image/"):
                raise Retryable("bad_response", f"{self._api.name}'s image URL held {media_type}")
            extension = _EXTENSIONS.get(media_type, "bin")
            return Output(data, media_type, f"image-{index + 1}.{extension}")
        raise Retryable("bad_response", f"{self._api.name} answered an image without data")


def _decode(provider: str, b64: Any, stem: str) -> Output:
    try:
        data = base64.b64decode(str(b64 or ""), validate=True)
    except (binascii.Error, ValueError):
        raise Retryable("bad_response", f"{provider} sent an image that is not base64") from None
    media_type = sniff_media_type(data[:16])
    if not data or media_type is None or not media_type.startswith("image/"):
        raise Retryable("bad_response", f"{provider} sent data that is not an image")
    return Output(data, media_type, f"{stem}.{_EXTENSIONS.get(media_type, 'bin')}")


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
