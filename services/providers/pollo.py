"""Pollo.ai image-to-video over its platform API (key in the `x-api-key` header).

What this is based on (docs.pollo.ai, read through the search tools):
  POST /generation/{model path}, e.g. /generation/pollo/pollo-v1-6, body
       {"input": {"image", "prompt", "resolution", "length", "seed"}, "webhookUrl"?}
       -> {"code": "SUCCESS", "message": "success", "data": {"taskId", "status": "waiting"}}
       (integrations also report the unwrapped {"taskId", "status"}; both are accepted);
  GET  /generation/{taskId}/status
       -> {"taskId", "credit", "generations": [{"id", "status": "waiting" | "processing" |
          "succeed" | "failed", "failMsg", "url", "mediaType": "video", ...}]}
          (likewise accepted inside a {"code", "data"} envelope);
  errors -> {"message", "code"} (sometimes with "issues": [{"message"}]).
Pollo's model pages describe `image` as a URL; a job's input is bytes in our storage, so it is
sent as a base64 data URI, which integrations report Pollo accepts. Pollo keeps results for
14 days, so the MP4 is downloaded at once. No cancel endpoint is documented: a cancelled
job stops polling and the task finishes (and is billed) at Pollo."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from genmesh.v1 import job_pb2
from services.providers.adapter import InvalidInput, JobContext, Output, Result, Retryable
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP
from services.providers.params import INT, STR, Param
from services.providers.remote import data_uri

log = logging.getLogger(__name__)

I2V = job_pb2.TASK_IMAGE_TO_VIDEO
RESOLUTIONS = ("480p", "720p", "1080p")
LENGTHS = (5, 10)
_DEFAULT_MAX_WAIT = 1800.0
# Words in a failMsg that mean the request itself was refused, not that Pollo had trouble.
_REFUSALS = ("moderation", "sensitive", "nsfw", "policy", "violat", "invalid")

PARAMS: tuple[Param, ...] = (
    Param("resolution", STR, "Video resolution.", "480p", allowed=RESOLUTIONS),
    Param("length", INT, "Video length in seconds: 5 or 10.", 5, 5, 10),
    Param("seed", INT, "Fixes the noise for reproducible videos.", None, 0, 2147483647),
)


class PolloAdapter(ConfiguredAdapter):
    """Image-to-video on Pollo: one task per job, polled until its generation succeeds."""

    family = "pollo"
    option_keys = ("max_wait",)
    summary = "Pollo.ai image-to-video (Pollo, Kling, Vidu and other video models)."
    params = PARAMS
    needs_models = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.http = self.own(ProviderHTTP(config, headers={"x-api-key": config.api_key}))
        # Result videos are on Pollo's storage CDN: fetched without our key.
        self.files = self.own(ProviderHTTP(config))
        self.handlers[I2V] = self._image_to_video
        self._max_wait = config.option_number("max_wait", _DEFAULT_MAX_WAIT)

    async def _image_to_video(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        if params["length"] not in LENGTHS:
            raise InvalidInput(
                "invalid_parameter",
                f"length must be one of {', '.join(map(str, LENGTHS))}, got {params['length']}",
            )
        task_id = await ctx.previous_request_id()
        state: dict[str, Any] | None = None
        if task_id:
            try:
                state = await self._status(task_id)
            except InvalidInput:
                state = None
            if state is None or _generation(state).get("status") == "failed":
                # Nothing paid is lost by starting over: that task is unknown or failed.
                log.info("%s: cannot resume task %s; creating anew", self.name, task_id)
                task_id, state = "", None
        if not task_id:
            task_id = await self._create(ctx, params)
            await ctx.record_request_id(task_id)
        video = await self._wait(ctx, task_id, state)
        data, media_type = await self.files.download(str(video["url"]))
        if not media_type.startswith("video/"):
            media_type = "video/mp4"
        return Result(outputs=[Output(data, media_type, "video.mp4")])

    async def _create(self, ctx: JobContext, params: Mapping[str, Any]) -> str:
        asset, image = await ctx.read_input()
        media_type = asset.media_type or "image/png"
        job_input: dict[str, Any] = {
            "image": data_uri(image, media_type),
            "prompt": ctx.job.spec.prompt,
            "resolution": params["resolution"],
            "length": params["length"],
        }
        if params["seed"] is not None:
            job_input["seed"] = params["seed"]
        path = self.model(I2V).strip("/")
        answer = _unwrapped(
            await self.http.json("POST", f"/generation/{path}", json={"input": job_input})
        )
        task_id = answer.get("taskId")
        if not isinstance(task_id, str) or not task_id:
            raise Retryable("bad_response", f"{self.name} returned no taskId")
        return task_id

    async def _status(self, task_id: str) -> dict[str, Any]:
        return _unwrapped(await self.http.json("GET", f"/generation/{task_id}/status"))

    async def _wait(
        self, ctx: JobContext, task_id: str, state: dict[str, Any] | None
    ) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            if state is None:
                state = await self._status(task_id)
            generation = _generation(state)
            status = generation.get("status") or "waiting"
            if status == "succeed" and generation.get("url"):
                return generation
            if status == "failed":
                reason = str(generation.get("failMsg") or "no reason given")
                text = f"{self.name} task {task_id} failed: {self.http.scrub(reason)}"
                if any(word in reason.lower() for word in _REFUSALS):
                    raise InvalidInput("rejected_by_provider", text)
                raise Retryable("generation_failed", text)
            if time.monotonic() - started > self._max_wait:
                raise Retryable(
                    "provider_timeout",
                    f"{self.name} task still {status} after {self._max_wait:g} s",
                )
            await ctx.progress(None, f"Pollo task {status}")
            await asyncio.sleep(self.config.poll_interval)
            state = None


def _unwrapped(answer: Any) -> dict[str, Any]:
    """The payload, with or without Pollo's {"code", "message", "data"} envelope."""
    if not isinstance(answer, dict):
        raise Retryable("bad_response", "Pollo answered with an unexpected body")
    data = answer.get("data")
    return data if isinstance(data, dict) else answer


def _generation(state: Mapping[str, Any]) -> dict[str, Any]:
    generations = state.get("generations") or []
    first = generations[0] if generations else {}
    return first if isinstance(first, dict) else {}
