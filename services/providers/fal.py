"""fal.ai through its queue API (https://queue.fal.run).

A job is one queue request: POST /{model_id} submits it (the answer carries its request_id),
GET /{owner}/{app}/requests/{id}/status?logs=1 reports IN_QUEUE (with queue_position),
IN_PROGRESS (with the runner's logs) and COMPLETED, GET /{owner}/{app}/requests/{id} returns
the model's output (or its error, with the status code that classifies it), and
PUT .../requests/{id}/cancel withdraws it. Status, result and cancel paths drop the model's
subpath ("fal-ai/flux/schnell" is polled under "fal-ai/flux"). Input files travel inline as
base64 data URIs, which fal accepts wherever a model takes a file URL; output files are
downloaded from the URLs the result names (images[].url, video.url, audio_url, ...).

fal has no cheap endpoint to probe without queueing work, so check() only looks for the key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, JobContext, Output, Result, Retryable
from services.providers.base import ConfiguredAdapter, cancel_remote
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP
from services.providers.params import BOOL, INT, NUM, STR, Param
from services.providers.remote import (
    RemoteFiles,
    data_uri,
    is_file_reference,
    json_or_none,
    percent_in,
)

log = logging.getLogger(__name__)

T2I = job_pb2.TASK_TEXT_TO_IMAGE
I2I = job_pb2.TASK_IMAGE_TO_IMAGE
I2V = job_pb2.TASK_IMAGE_TO_VIDEO
S2T = job_pb2.TASK_SPEECH_TO_TEXT

# fal's named image sizes (a model also takes {width, height}, which we do not expose).
IMAGE_SIZES = (
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
)
# Seconds one job waits on fal before handing the job back to be resumed (not resubmitted).
DEFAULT_MAX_WAIT = 3600.0
# Namespaces whose app ids carry one more path segment ("workflows/owner/app/...").
_NAMESPACES = ("workflows", "comfy")

Body = dict[str, Any]


class FalAdapter(ConfiguredAdapter):
    """fal.ai models through the queue: text-to-image, image-to-image, image-to-video,
    speech-to-text, each on the model the catalog names."""

    family = "fal"
    option_keys = ("max_wait",)
    summary = "fal.ai serverless models (FLUX, Kling, Whisper, ...) through the fal queue API."
    needs_models = True
    params = (
        Param(
            "image_size",
            STR,
            "Named output size.",
            "landscape_4_3",
            allowed=IMAGE_SIZES,
            tasks=(T2I,),
        ),
        Param("num_images", INT, "Images to generate.", 1, 1, 4, tasks=(T2I, I2I)),
        Param("seed", INT, "Makes the output reproducible.", None, 0, 2**32 - 1),
        Param(
            "num_inference_steps",
            INT,
            "Denoising steps; unset uses the model's default (FLUX schnell allows 1-12).",
            None,
            1,
            50,
            tasks=(T2I, I2I),
        ),
        Param(
            "guidance_scale",
            NUM,
            "How closely the image follows the prompt; unset uses the model's default.",
            None,
            0,
            20,
            tasks=(T2I, I2I),
        ),
        Param(
            "output_format",
            STR,
            "Image file format.",
            "png",
            allowed=("jpeg", "png"),
            tasks=(T2I, I2I),
        ),
        Param(
            "strength",
            NUM,
            "How much the input image may change (1 replaces it entirely).",
            0.95,
            0.01,
            1,
            tasks=(I2I,),
        ),
        Param(
            "duration",
            STR,
            "Video length in seconds.",
            "5",
            allowed=("5", "10"),
            tasks=(I2V,),
        ),
        Param("negative_prompt", STR, "What the video should avoid.", None, tasks=(I2V,)),
        Param(
            "language",
            STR,
            "Spoken language as an ISO 639-1 code (en, de, ...); unset detects it.",
            None,
            tasks=(S2T,),
        ),
        Param(
            "translate",
            BOOL,
            "Translate the speech into English instead of transcribing it.",
            False,
            tasks=(S2T,),
        ),
    )

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        headers = {"Authorization": f"Key {config.api_key}"} if config.api_key else {}
        self._http = self.own(ProviderHTTP(config, headers=headers))
        self._files = self.own(RemoteFiles(config, self._http))
        self._max_wait = config.option_number("max_wait", DEFAULT_MAX_WAIT)
        self.handlers = {
            T2I: self._text_to_image,
            I2I: self._image_to_image,
            I2V: self._image_to_video,
            S2T: self._speech_to_text,
        }

    # --- tasks ---------------------------------------------------------------------------

    async def _text_to_image(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        async def body() -> Body:
            return _image_body(ctx.job.spec.prompt, p) | {"image_size": p["image_size"]}

        result = await self._queue(ctx, self.model(T2I), body)
        return Result(await self._download(result, "image"))

    async def _image_to_image(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        async def body() -> Body:
            image = await _input_uri(ctx)
            return _image_body(ctx.job.spec.prompt, p) | {
                "image_url": image,
                "strength": p["strength"],
            }

        result = await self._queue(ctx, self.model(I2I), body)
        return Result(await self._download(result, "image"))

    async def _image_to_video(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        async def body() -> Body:
            return _compact(
                {
                    "prompt": ctx.job.spec.prompt,
                    "image_url": await _input_uri(ctx),
                    "duration": p["duration"],
                    "negative_prompt": p["negative_prompt"],
                    "seed": p["seed"],
                }
            )

        result = await self._queue(ctx, self.model(I2V), body)
        return Result(await self._download(result, "video"))

    async def _speech_to_text(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        async def body() -> Body:
            return _compact(
                {
                    "audio_url": await _input_uri(ctx),
                    "task": "translate" if p["translate"] else "transcribe",
                    "language": p["language"],
                    # Whisper-style models take the prompt as a vocabulary hint.
                    "prompt": ctx.job.spec.prompt or None,
                }
            )

        result = await self._queue(ctx, self.model(S2T), body)
        text = result.get("text")
        if not isinstance(text, str):
            raise Fatal("bad_output", f"{self.name} returned no transcript")
        return Result(text=text.strip())

    # --- the queue -----------------------------------------------------------------------

    async def _queue(
        self, ctx: JobContext, model: str, body: Callable[[], Awaitable[Body]]
    ) -> dict[str, Any]:
        """Submit (or resume) one queue request and return the model's output."""
        app = _app_path(model)
        request_id = await ctx.previous_request_id()
        status = await self._resumable(app, request_id) if request_id else None
        if status is None:
            submitted = await self._http.json("POST", f"/{model}", json=await body())
            new_id = submitted.get("request_id") if isinstance(submitted, dict) else None
            if not isinstance(new_id, str) or not new_id:
                raise Retryable("bad_response", f"{self.name} queued the job without a request_id")
            request_id = new_id
            await ctx.record_request_id(request_id)
        base = f"/{app}/requests/{request_id}"
        try:
            await self._wait(ctx, base, status)
            result = await self._http.json("GET", base)
        except asyncio.CancelledError:
            await cancel_remote(
                f"{self.name} request {request_id}",
                lambda: self._http.request("PUT", f"{base}/cancel"),
            )
            raise
        if not isinstance(result, dict):
            raise Fatal("bad_output", f"{self.name} returned a result that is not an object")
        return result

    async def _resumable(self, app: str, request_id: str) -> dict[str, Any] | None:
        """The status of an earlier delivery's request, or None if it cannot be resumed: fal
        forgot it, or it ended in an error (a retry must then pay for a fresh attempt)."""
        status = await json_or_none(
            self._http, "GET", f"/{app}/requests/{request_id}/status", params={"logs": "1"}
        )
        if not isinstance(status, dict) or status.get("error"):
            log.info("%s: request %s cannot be resumed; submitting anew", self.name, request_id)
            return None
        return status

    async def _wait(self, ctx: JobContext, base: str, status: dict[str, Any] | None) -> None:
        """Poll until COMPLETED, reporting queue position and new log lines as progress."""
        deadline = time.monotonic() + self._max_wait
        reported = ""
        last_log = ""
        logs_seen = 0
        while True:
            if status is None:
                status = await self._http.json("GET", f"{base}/status", params={"logs": "1"})
            state = status.get("status") if isinstance(status, dict) else None
            percent: float | None = None
            message = ""
            if state == "IN_QUEUE":
                message = f"queued, position {status.get('queue_position', '?')}"
            elif state == "IN_PROGRESS":
                logs = status.get("logs") or []
                if len(logs) < logs_seen:
                    logs_seen = 0
                fresh = [str(e.get("message", "")) for e in logs[logs_seen:] if isinstance(e, dict)]
                logs_seen = len(logs)
                last_log = next((m for m in reversed(fresh) if m.strip()), last_log)
                message = last_log or "running"
                percent = percent_in("\n".join(fresh))
            elif state == "COMPLETED":
                return
            else:
                raise Retryable("bad_response", f"{self.name} reported unknown status {state!r}")
            if message != reported or percent is not None:
                await ctx.progress(percent, message)
                reported = message
            if time.monotonic() >= deadline:
                raise Retryable(
                    "still_running",
                    f"{self.name} did not finish within {self._max_wait:g}s; will resume",
                )
            await asyncio.sleep(self.config.poll_interval)
            status = None

    async def _download(self, result: Mapping[str, Any], stem: str) -> list[Output]:
        """Every file the result names, fetched into bytes."""
        files = list(_file_refs(result))
        if not files:
            raise Fatal("bad_output", f"{self.name} returned no {stem}")
        outputs = []
        for i, (url, media_type) in enumerate(files):
            name = stem if len(files) == 1 else f"{stem}-{i + 1}"
            outputs.append(await self._files.fetch(url, name, media_type))
        return outputs


def _app_path(model: str) -> str:
    """The owner/app part of a model id, under which fal serves status, result and cancel."""
    parts = [p for p in model.strip("/").split("/") if p]
    keep = 3 if parts and parts[0] in _NAMESPACES else 2
    if len(parts) < keep:
        raise InvalidInput("bad_model", f"fal model ids look like owner/app[/path], got {model!r}")
    return "/".join(parts[:keep])


def _image_body(prompt: str, p: Mapping[str, Any]) -> Body:
    return _compact(
        {
            "prompt": prompt,
            "num_images": p["num_images"],
            "seed": p["seed"],
            "num_inference_steps": p["num_inference_steps"],
            "guidance_scale": p["guidance_scale"],
            "output_format": p["output_format"],
        }
    )


def _compact(body: Body) -> Body:
    """Leave out what the job did not set, so the model's own defaults apply."""
    return {k: v for k, v in body.items() if v is not None}


async def _input_uri(ctx: JobContext) -> str:
    if not ctx.job.spec.input_asset_ids:
        raise InvalidInput("missing_input", "this task needs one input asset")
    asset, data = await ctx.read_input(0)
    if not data:
        raise InvalidInput("empty_input", "the input asset is empty")
    return data_uri(data, asset.media_type)


def _file_refs(value: Any, depth: int = 0) -> list[tuple[str, str]]:
    """(url, content_type) of every file in a fal result: File objects ({"url": ...}, as in
    images[] or video) and plain "*_url" fields, in document order."""
    if depth > 4:
        return []
    found: list[tuple[str, str]] = []
    if isinstance(value, list):
        for item in value:
            found.extend(_file_refs(item, depth + 1))
    elif isinstance(value, dict):
        url = value.get("url")
        if is_file_reference(url):
            return [(url, str(value.get("content_type") or ""))]
        for key, item in value.items():
            if key.endswith("_url") and is_file_reference(item):
                found.append((item, ""))
            elif isinstance(item, dict | list):
                found.extend(_file_refs(item, depth + 1))
    return found
