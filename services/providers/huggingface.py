"""Hugging Face Inference API (serverless hf-inference): POST /models/{model_id}, Bearer token.

Text-to-image sends {"inputs", "parameters"} and receives image bytes; speech-to-text sends the
audio bytes and receives {"text"}; text-to-speech sends {"inputs"} and receives audio bytes.
Calls are synchronous: there is no request id to record or resume, and cancelling closes the
connection. A model still loading answers 503 with its estimated_time, which becomes the
retry delay, unless options.wait_for_model asks the API to hold the call until it is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from genmesh.v1 import job_pb2
from services.common.tasks import task_name
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
from services.providers.http import ProviderHTTP, bearer, error_message
from services.providers.params import INT, NUM, STR, Param, require_multiple
from services.providers.remote import extension, sniff_media_type

T2I = job_pb2.TASK_TEXT_TO_IMAGE
STT = job_pb2.TASK_SPEECH_TO_TEXT
TTS = job_pb2.TASK_TEXT_TO_SPEECH

PARAMS: tuple[Param, ...] = (
    Param("negative_prompt", STR, "What the image should not show.", "", tasks=(T2I,)),
    Param(
        "width",
        INT,
        "Image width, a multiple of 8; unset: the model's.",
        None,
        64,
        2048,
        (),
        (T2I,),
    ),
    Param(
        "height",
        INT,
        "Image height, a multiple of 8; unset: the model's.",
        None,
        64,
        2048,
        (),
        (T2I,),
    ),
    Param("steps", INT, "Denoising steps; unset: the model's.", None, 1, 100, tasks=(T2I,)),
    Param(
        "guidance_scale", NUM, "Prompt adherence; unset: the model's.", None, 0, 30, tasks=(T2I,)
    ),
    Param("seed", INT, "Reproducible generation.", None, 0, 2**32 - 1, tasks=(T2I,)),
)
# Our parameter name -> the key in the request's "parameters".
_IMAGE_KEYS = {
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "seed": "seed",
}


class HuggingFaceHTTP(ProviderHTTP):
    """Classifies a loading model (503 with estimated_time) as Retryable after that long."""

    def status_error(self, response: httpx.Response) -> ProviderError:
        if response.status_code == 503:
            try:
                body = response.json()
            except ValueError:
                body = None
            wait = body.get("estimated_time") if isinstance(body, dict) else None
            if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
                reason = self.scrub(error_message(response)) or "the model is loading"
                return Retryable(
                    "model_loading",
                    f"{self.name}: {reason} (ready in about {wait:.0f} s)",
                    retry_after=float(wait),
                )
        return super().status_error(response)


class HuggingFaceAdapter(ConfiguredAdapter):
    """The serverless Inference API; each task uses the model the catalog names for it."""

    family = "huggingface"
    option_keys = ("wait_for_model",)
    summary = "Hugging Face Inference API: text-to-image, speech-to-text and text-to-speech."
    params = PARAMS
    needs_models = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        headers = bearer(config)
        if config.option_flag("wait_for_model", False):
            # The API then holds the call until the model is loaded instead of answering 503.
            headers["x-wait-for-model"] = "true"
        self._http = self.own(HuggingFaceHTTP(config, headers=headers))
        self.handlers = {T2I: self._text_to_image, STT: self._speech_to_text, TTS: self._speak}

    async def _text_to_image(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        prompt = _prompt(ctx)
        require_multiple(p, 8)
        parameters = {
            key: p[name] for name, key in _IMAGE_KEYS.items() if p[name] not in (None, "")
        }
        body = {"inputs": prompt, "parameters": parameters}
        response = await self._post(ctx, T2I, json=body, headers={"Accept": "image/png"})
        return Result([_media_output(response, "image", "image")])

    async def _speech_to_text(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        if not ctx.job.spec.input_asset_ids:
            raise InvalidInput("missing_input", "speech-to-text needs one audio input")
        asset, audio = await ctx.read_input(0)
        if not audio:
            raise InvalidInput("empty_input", "the audio input is empty")
        media_type = asset.media_type.split(";")[0].strip() or sniff_media_type(audio)
        if not media_type.startswith("audio/"):
            raise InvalidInput(
                "unsupported_input", f"speech-to-text needs audio, got {media_type or 'unknown'}"
            )
        response = await self._post(ctx, STT, content=audio, headers={"Content-Type": media_type})
        try:
            body = response.json()
        except ValueError:
            body = None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise Fatal("bad_output", f"{self.name} returned no transcript: {response.text[:200]}")
        return Result(text=text.strip())

    async def _speak(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        response = await self._post(ctx, TTS, json={"inputs": _prompt(ctx)})
        return Result([_media_output(response, "audio", "speech")])

    async def _post(
        self, ctx: JobContext, task: job_pb2.Task.ValueType, **kwargs: Any
    ) -> httpx.Response:
        model = self.model(task)
        await ctx.progress(None, f"waiting for {model}")
        return await self._http.request("POST", f"/models/{model}", **kwargs)


def _media_output(response: httpx.Response, kind: str, stem: str) -> Output:
    """The response body as an Output, if it is the kind of media the task produces."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if not media_type.startswith(f"{kind}/"):
        sniffed = sniff_media_type(response.content)
        if not sniffed.startswith(f"{kind}/"):
            shown = media_type or "an untyped body"
            raise Fatal("bad_output", f"expected {kind} from Hugging Face, got {shown}")
        media_type = sniffed
    return Output(response.content, media_type, f"{stem}{extension(media_type)}")


def _prompt(ctx: JobContext) -> str:
    prompt = ctx.job.spec.prompt
    if not prompt.strip():
        raise InvalidInput("missing_prompt", f"{task_name(ctx.job.spec.task)} needs a prompt")
    return prompt
