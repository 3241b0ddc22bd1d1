"""Runware image inference over its HTTP REST API (one endpoint, Bearer key).

Every request is a JSON array of tasks POSTed to the API root; every answer is
{"data": [...]} and/or {"errors": [{"code", "message", "parameter", "taskType", "taskUUID"}]}:
  [{"taskType": "imageInference", "taskUUID", "positivePrompt", "model", "width", "height",
    "numberResults", "outputType": "URL", "outputFormat": "PNG", "deliveryMethod": "async"}]
    -> {"data": [{"taskType": "imageInference", "taskUUID"}]}           (queued)
  [{"taskType": "getResponse", "taskUUID"}]
    -> {"data": [{"taskUUID", "status": "processing" | "success", "imageUUID", "imageURL",
                  "imageBase64Data", "seed", "cost"}, ...]}              (one per result)

The taskUUID is ours to choose, so it is recorded before the task is sent: a redelivered
job polls it, and sends it again only if Runware never received it. Runware documents no
cancel operation: a cancelled job just stops polling (the task runs out at Runware)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from genmesh.v1 import job_pb2
from services.providers.adapter import (
    Fatal,
    InvalidInput,
    JobContext,
    Output,
    ProviderError,
    Result,
    Retryable,
)
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP, bearer, retry_after
from services.providers.params import INT, NUM, STR, Param, require_multiple
from services.providers.remote import data_uri

log = logging.getLogger(__name__)

T2I = job_pb2.TASK_TEXT_TO_IMAGE
I2I = job_pb2.TASK_IMAGE_TO_IMAGE
OUTPUT_FORMATS = ("JPG", "PNG", "WEBP")
_MEDIA = {"JPG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}
_SIDE_STEP = 64
_DEFAULT_MAX_WAIT = 600.0
# Error codes that say "try again later" rather than "this request is wrong".
_TRANSIENT = ("timeout", "unavailable", "busy", "ratelimit", "overload", "internal", "server")
_ACCOUNT = ("apikey", "credit", "balance", "permission", "forbidden")
# Statuses whose meaning does not depend on the error codes in the body.
_STATUS_DECIDES = {401, 402, 403, 408, 425, 429}

PARAMS: tuple[Param, ...] = (
    Param("width", INT, f"Image width in pixels, a multiple of {_SIDE_STEP}.", 1024, 128, 2048),
    Param("height", INT, f"Image height in pixels, a multiple of {_SIDE_STEP}.", 1024, 128, 2048),
    Param("number_results", INT, "Images to generate.", 1, 1, 20),
    Param("negative_prompt", STR, "What the images should not show.", None),
    Param("steps", INT, "Inference steps.", None, 1, 100),
    Param("cfg_scale", NUM, "Classifier-free guidance scale.", None, 0, 50),
    Param("seed", INT, "Fixes the noise for reproducible images.", None, 1, 2**63 - 1),
    Param("output_format", STR, "Image file format.", "PNG", allowed=OUTPUT_FORMATS),
    Param(
        "strength",
        NUM,
        "How far image-to-image may move away from the input image.",
        0.8,
        0,
        1,
        tasks=(I2I,),
    ),
)


class RunwareAdapter(ConfiguredAdapter):
    """Text- and image-to-image on Runware, queued with async delivery and polled."""

    family = "runware"
    option_keys = ("output_type", "max_wait")
    summary = "Runware Sonic Inference Engine: fast, cheap image generation (FLUX, SDXL, ...)."
    params = PARAMS
    needs_models = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        # The two result forms _image reads (a dataURI one it would not find).
        self._output_type = config.option_text("output_type", "URL", choices=("URL", "base64Data"))
        self.http = self.own(ProviderHTTP(config, headers=bearer(config)))
        # Result URLs point at Runware's image CDN: fetched without our key.
        self.files = self.own(ProviderHTTP(config))
        self.handlers[T2I] = self._text_to_image
        self.handlers[I2I] = self._image_to_image
        self._max_wait = config.option_number("max_wait", _DEFAULT_MAX_WAIT)

    async def _text_to_image(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        return await self._infer(ctx, params, self._task(ctx, params, T2I))

    async def _image_to_image(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        asset, data = await ctx.read_input()
        media_type = asset.media_type or "image/png"
        task = self._task(ctx, params, I2I)
        task["seedImage"] = data_uri(data, media_type)
        task["strength"] = params["strength"]
        return await self._infer(ctx, params, task)

    def _task(
        self, ctx: JobContext, params: Mapping[str, Any], job_task: job_pb2.Task.ValueType
    ) -> dict[str, Any]:
        require_multiple(params, _SIDE_STEP)
        task: dict[str, Any] = {
            "taskType": "imageInference",
            "positivePrompt": ctx.job.spec.prompt,
            "model": self.model(job_task),
            "width": params["width"],
            "height": params["height"],
            "numberResults": params["number_results"],
            "outputType": self._output_type,
            "outputFormat": params["output_format"],
            "deliveryMethod": "async",
        }
        optional = {
            "negativePrompt": params["negative_prompt"],
            "steps": params["steps"],
            "CFGScale": params["cfg_scale"],
            "seed": params["seed"],
        }
        task.update({k: v for k, v in optional.items() if v is not None})
        return task

    async def _infer(
        self, ctx: JobContext, params: Mapping[str, Any], task: dict[str, Any]
    ) -> Result:
        task_uuid = await ctx.previous_request_id()
        received: list[dict[str, Any]] | None = None
        if task_uuid:
            received, failures = await self._poll(task_uuid)
            if any(_unknown(f) for f in failures):
                # Runware never got it (the worker died between recording and sending).
                log.info("%s: task %s unknown to Runware; sending it", self.name, task_uuid)
                received = None
            elif failures:
                # That attempt failed at Runware: nothing paid is lost by starting over.
                log.info("%s: task %s had failed; sending a new one", self.name, task_uuid)
                task_uuid, received = "", None
        if not task_uuid:
            task_uuid = str(uuid.uuid4())
            await ctx.record_request_id(task_uuid)
        if received is None:
            task["taskUUID"] = task_uuid
            _, failures = await self._send([task], task_uuid)
            if failures:
                raise failures[0]
        images = await self._wait(ctx, task_uuid, params["number_results"], received)
        fmt = params["output_format"]
        return Result(outputs=[await self._image(item, i, fmt) for i, item in enumerate(images)])

    async def _send(
        self, tasks: list[dict[str, Any]], task_uuid: str
    ) -> tuple[list[dict[str, Any]], list[ProviderError]]:
        """The data items Runware returns for `task_uuid`, and its task-level failures.

        Runware puts the reason in each error's code whatever the HTTP status, so a 4xx or
        5xx that carries errors for our task is classified by code; only authentication,
        billing and rate limiting are decided by the status alone."""
        try:
            # The API root itself is the endpoint (no trailing slash).
            response = await self.http.client.post(self.config.base_url, json=tasks)
        except httpx.HTTPError as exc:
            raise self.http.transport_error(exc) from None
        status = response.status_code
        if status in _STATUS_DECIDES:
            raise self.http.status_error(response)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if response.is_success:
                raise Retryable("bad_response", f"{self.name} answered with an unexpected body")
            raise self.http.status_error(response)
        mine = [
            item
            for key in ("data", "errors")
            for item in answer.get(key) or []
            if isinstance(item, dict) and item.get("taskUUID") in (None, task_uuid)
        ]
        failed = [i for i in mine if i.get("status") == "error" or i.get("code")]
        if not response.is_success and not failed:
            raise self.http.status_error(response)
        data = [i for i in mine if i not in failed]
        wait = retry_after(response.headers)
        return data, [self._error(f, status, wait) for f in failed]

    async def _poll(self, task_uuid: str) -> tuple[list[dict[str, Any]], list[ProviderError]]:
        return await self._send([{"taskType": "getResponse", "taskUUID": task_uuid}], task_uuid)

    async def _wait(
        self,
        ctx: JobContext,
        task_uuid: str,
        expected: int,
        received: list[dict[str, Any]] | None,
    ) -> list[dict[str, Any]]:
        started = time.monotonic()
        done: dict[str, dict[str, Any]] = {}
        while True:
            if received is None:
                await asyncio.sleep(self.config.poll_interval)
                received, failures = await self._poll(task_uuid)
                if failures:
                    raise failures[0]
            for item in received:
                if item.get("status") == "success" or item.get("imageUUID"):
                    done[str(item.get("imageUUID") or len(done))] = item
            if len(done) >= expected:
                return list(done.values())[:expected]
            if time.monotonic() - started > self._max_wait:
                raise Retryable(
                    "provider_timeout",
                    f"{self.name} task still processing after {self._max_wait:g} s",
                )
            await ctx.progress(100.0 * len(done) / expected, "Runware processing")
            received = None

    async def _image(self, item: Mapping[str, Any], index: int, fmt: str) -> Output:
        media_type, extension = _MEDIA[fmt]
        if item.get("imageBase64Data"):
            try:
                data = base64.b64decode(str(item["imageBase64Data"]), validate=True)
            except (binascii.Error, ValueError):
                raise Retryable(
                    "bad_response", f"{self.name} sent undecodable image data"
                ) from None
        elif item.get("imageURL"):
            data, served = await self.files.download(str(item["imageURL"]))
            media_type = served if served.startswith("image/") else media_type
        else:
            raise Retryable("bad_response", f"{self.name} reported success without an image")
        return Output(data, media_type, f"image-{index}.{extension}")

    def _error(
        self, error: Mapping[str, Any], status: int, wait: float | None = None
    ) -> ProviderError:
        code = str(error.get("code") or "error")
        message = self.http.scrub(str(error.get("message") or code))
        text = f"{self.name}: {message}"
        lowered = code.lower()
        if any(word in lowered for word in _ACCOUNT):
            return Fatal(code, text)
        if status >= 500 or any(word in lowered for word in _TRANSIENT):
            return Retryable(code, text, retry_after=wait)
        return InvalidInput(code, text)


def _unknown(failure: ProviderError) -> bool:
    return "notfound" in failure.code.lower()
