"""Replicate through its predictions API (https://api.replicate.com/v1), Bearer-authenticated.

A job is one prediction. The catalog's model is either an official model, "owner/name",
created with POST /models/{owner}/{name}/predictions, or a pinned version,
"owner/name:version", created with POST /predictions {"version", "input"}. Validation happens
at creation (422 problem+json: {"title", "detail", "status", "invalid_fields"}). The prediction
is then polled with GET /predictions/{id}: starting -> processing -> succeeded | failed |
canceled, its `logs` becoming progress ("NN%" read as percent, as tqdm bars print it), and an
image model's partial `output` during processing becoming a preview. Output is a file URL, a
list of them, a list of text tokens (language models) or an object (Whisper's transcription);
files are downloaded, without the key when they live off the API's origin (replicate.delivery).
POST /predictions/{id}/cancel stops it. Input files go inline as data URIs up to
`options.data_uri_limit` bytes (1 MB, Replicate's advice) and through POST /files above it.

Options: `wait` (1-60) sends `Prefer: wait=N`, so short predictions finish in the create call;
the request id is then recorded only when that call returns, so a worker dying inside those N
seconds costs one repeated prediction. `max_wait` bounds how long one delivery polls.
check() probes GET /account (cached), which proves both reachability and the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from genmesh.v1 import job_pb2
from services.providers.adapter import (
    Fatal,
    InvalidInput,
    JobContext,
    ProviderError,
    Result,
    Retryable,
)
from services.providers.base import ConfiguredAdapter, cancel_remote
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP, bearer
from services.providers.params import BOOL, INT, NUM, STR, Param
from services.providers.probe import CachedProbe
from services.providers.remote import (
    RemoteFiles,
    data_uri,
    extension,
    is_file_reference,
    json_or_none,
    last_line,
    percent_in,
    sniff_media_type,
)

log = logging.getLogger(__name__)

T2I = job_pb2.TASK_TEXT_TO_IMAGE
T2T = job_pb2.TASK_TEXT_TO_TEXT
S2T = job_pb2.TASK_SPEECH_TO_TEXT

ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
DEFAULT_MAX_WAIT = 3600.0
DEFAULT_DATA_URI_LIMIT = 1_000_000
_ACTIVE = ("starting", "processing")
# Replicate's own words for a failure that a second try may not repeat.
_TRANSIENT_FAILURES = ("please retry", "interrupted", "out of memory", "timed out")

Prediction = dict[str, Any]


class ReplicateAdapter(ConfiguredAdapter):
    """Replicate predictions for text-to-image, text-to-text and speech-to-text, each on the
    model (or pinned version) the catalog names."""

    family = "replicate"
    option_keys = ("wait", "max_wait", "data_uri_limit", "health_ttl")
    summary = "Models hosted on Replicate (FLUX, Llama, Whisper, ...) through its predictions API."
    needs_models = True
    params = (
        Param(
            "aspect_ratio",
            STR,
            "Shape of the image.",
            "1:1",
            allowed=ASPECT_RATIOS,
            tasks=(T2I,),
        ),
        Param("num_outputs", INT, "Images to generate.", 1, 1, 4, tasks=(T2I,)),
        Param(
            "output_format",
            STR,
            "Image file format.",
            "png",
            allowed=("webp", "jpg", "png"),
            tasks=(T2I,),
        ),
        Param(
            "num_inference_steps",
            INT,
            "Denoising steps; unset uses the model's default (FLUX schnell allows 1-4).",
            None,
            1,
            50,
            tasks=(T2I,),
        ),
        Param("seed", INT, "Makes the output reproducible.", None, 0, 2**32 - 1, tasks=(T2I, T2T)),
        Param("system_prompt", STR, "Instructions ahead of the prompt.", None, tasks=(T2T,)),
        Param("max_tokens", INT, "Longest answer, in tokens.", None, 1, 32_768, tasks=(T2T,)),
        Param("temperature", NUM, "Sampling temperature.", None, 0, 5, tasks=(T2T,)),
        Param("top_p", NUM, "Nucleus sampling mass.", None, 0, 1, tasks=(T2T,)),
        Param(
            "language",
            STR,
            "Spoken language (a code such as en); unset detects it.",
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
        self._http = self.own(ProviderHTTP(config, headers=bearer(config)))
        self._files = self.own(RemoteFiles(config, self._http))
        # The create call must outlast the wait it asks for, or the prediction id is lost.
        wait = config.option_whole("wait", 0)
        self._prefer_wait = max(0, min(60, wait, int(config.timeout) - 5))
        self._max_wait = config.option_number("max_wait", DEFAULT_MAX_WAIT)
        self._inline_limit = config.option_whole("data_uri_limit", DEFAULT_DATA_URI_LIMIT)
        self.probe = CachedProbe(
            lambda: self._http.json("GET", "/account"), config.option_number("health_ttl", 60)
        )
        self.handlers = {
            T2I: self._text_to_image,
            T2T: self._text_to_text,
            S2T: self._speech_to_text,
        }

    # --- tasks ---------------------------------------------------------------------------

    async def _text_to_image(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        async def model_input() -> dict[str, Any]:
            return _compact(
                {
                    "prompt": ctx.job.spec.prompt,
                    "aspect_ratio": p["aspect_ratio"],
                    "num_outputs": p["num_outputs"],
                    "output_format": p["output_format"],
                    "num_inference_steps": p["num_inference_steps"],
                    "seed": p["seed"],
                }
            )

        prediction = await self._predict(ctx, T2I, model_input)
        urls = _file_urls(prediction.get("output"))
        if not urls:
            raise Fatal("bad_output", f"{self.name} returned no image")
        outputs = []
        for i, url in enumerate(urls):
            stem = "image" if len(urls) == 1 else f"image-{i + 1}"
            outputs.append(await self._files.fetch(url, stem))
        return Result(outputs)

    async def _text_to_text(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        async def model_input() -> dict[str, Any]:
            keys = ("system_prompt", "max_tokens", "temperature", "top_p", "seed")
            return _compact({"prompt": ctx.job.spec.prompt} | {k: p[k] for k in keys})

        prediction = await self._predict(ctx, T2T, model_input)
        return Result(text=self._text(prediction.get("output")))

    async def _speech_to_text(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        async def model_input() -> dict[str, Any]:
            return _compact(
                {
                    "audio": await self._input_file(ctx),
                    "language": p["language"],
                    # Sent only when asked for: not every speech model knows the field.
                    "translate": p["translate"] or None,
                }
            )

        prediction = await self._predict(ctx, S2T, model_input)
        return Result(text=self._text(prediction.get("output")).strip())

    # --- predictions ---------------------------------------------------------------------

    async def _predict(
        self,
        ctx: JobContext,
        task: job_pb2.Task.ValueType,
        model_input: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Prediction:
        """Create (or resume) the job's prediction and wait until it has succeeded."""
        model = self.model(task)
        previous = await ctx.previous_request_id()
        prediction = await self._resumable(previous) if previous else None
        if prediction is None:
            path, body = _create_call(model, await model_input())
            headers = {"Prefer": f"wait={self._prefer_wait}"} if self._prefer_wait else {}
            prediction = await self._http.json("POST", path, json=body, headers=headers)
            if not isinstance(prediction, dict) or not isinstance(prediction.get("id"), str):
                raise Retryable("bad_response", f"{self.name} created a prediction without an id")
            await ctx.record_request_id(prediction["id"])
        prediction_id: str = prediction["id"]
        try:
            return await self._wait(ctx, task, prediction)
        except asyncio.CancelledError:
            await cancel_remote(
                f"{self.name} prediction {prediction_id}",
                lambda: self._http.request("POST", f"/predictions/{prediction_id}/cancel"),
            )
            raise

    async def _resumable(self, prediction_id: str) -> Prediction | None:
        """An earlier delivery's prediction, unless Replicate forgot it or it ended badly (a
        retry must then pay for a fresh one)."""
        prediction = await json_or_none(self._http, "GET", f"/predictions/{prediction_id}")
        if not isinstance(prediction, dict) or prediction.get("status") in ("failed", "canceled"):
            log.info("%s: prediction %s cannot be resumed; creating anew", self.name, prediction_id)
            return None
        return prediction

    async def _wait(
        self, ctx: JobContext, task: job_pb2.Task.ValueType, prediction: Prediction
    ) -> Prediction:
        deadline = time.monotonic() + self._max_wait
        reported: tuple[float | None, str] = (None, "")
        previewed: set[str] = set()
        while True:
            status = prediction.get("status")
            if status == "succeeded":
                return prediction
            if status == "failed":
                raise _failure(self.name, prediction)
            if status == "canceled":
                raise Fatal("cancelled_at_provider", f"{self.name} canceled the prediction")
            if status not in _ACTIVE:
                raise Retryable("bad_response", f"{self.name} reported unknown status {status!r}")
            logs = str(prediction.get("logs") or "")
            update = (percent_in(logs), last_line(logs) or str(status))
            if update != reported:
                await ctx.progress(*update)
                reported = update
            if task == T2I and status == "processing":
                await self._preview(ctx, prediction.get("output"), previewed)
            if time.monotonic() >= deadline:
                raise Retryable(
                    "still_running",
                    f"{self.name} did not finish within {self._max_wait:g}s; will resume",
                )
            await asyncio.sleep(self.config.poll_interval)
            prediction = await self._http.json("GET", f"/predictions/{prediction['id']}")
            if not isinstance(prediction, dict):
                raise Retryable("bad_response", f"{self.name} answered a poll with no prediction")

    async def _preview(self, ctx: JobContext, partial: Any, previewed: set[str]) -> None:
        """Models that publish intermediate images while processing: show the newest once."""
        urls = _file_urls(partial)
        if not urls or urls[-1] in previewed:
            return
        previewed.add(urls[-1])
        await ctx.preview(await self._files.fetch(urls[-1], "preview"))

    async def _input_file(self, ctx: JobContext) -> str:
        """The job's input as Replicate takes a file: a data URI, or an upload when large."""
        if not ctx.job.spec.input_asset_ids:
            raise InvalidInput("missing_input", "this task needs one input asset")
        asset, data = await ctx.read_input(0)
        if not data:
            raise InvalidInput("empty_input", "the input asset is empty")
        media_type = asset.media_type or sniff_media_type(data)
        if len(data) <= self._inline_limit:
            return data_uri(data, media_type)
        upload = {"content": (f"input{extension(media_type)}", data, media_type)}
        created = await self._http.json("POST", "/files", files=upload)
        url = created.get("urls", {}).get("get") if isinstance(created, dict) else None
        if not isinstance(url, str):
            raise Retryable("bad_response", f"{self.name} stored the input without a URL")
        return url

    def _text(self, output: Any) -> str:
        """Text from a language model's token list, a plain string or a transcription object."""
        if isinstance(output, str):
            return output
        if isinstance(output, list) and all(isinstance(t, str) for t in output):
            return "".join(output)
        if isinstance(output, dict):
            for key in ("transcription", "text", "output"):
                if isinstance(output.get(key), str):
                    return str(output[key])
        raise Fatal("bad_output", f"{self.name} returned no text")


def _create_call(model: str, model_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Path and body creating a prediction on an official model or a pinned version."""
    name, _, version = model.partition(":")
    owner, _, short = name.partition("/")
    if not owner or not short or "/" in short:
        raise InvalidInput(
            "bad_model", f"Replicate models look like owner/name[:version], got {model!r}"
        )
    if version:
        return "/predictions", {"version": version, "input": model_input}
    return f"/models/{owner}/{short}/predictions", {"input": model_input}


def _failure(name: str, prediction: Prediction) -> ProviderError:
    reason = str(prediction.get("error") or "the prediction failed")
    if any(word in reason.lower() for word in _TRANSIENT_FAILURES):
        return Retryable("generation_failed", f"{name}: {reason}")
    return Fatal("generation_failed", f"{name}: {reason}")


def _file_urls(output: Any) -> list[str]:
    """File URLs in an output: one URL, a list of them, or an object's URL fields."""
    if is_file_reference(output):
        return [output]
    if isinstance(output, list):
        return [o for o in output if is_file_reference(o)]
    if isinstance(output, dict):
        return [v for v in output.values() if is_file_reference(v)]
    return []


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    """Leave out what the job did not set, so the model's own defaults apply."""
    return {k: v for k, v in body.items() if v is not None}
