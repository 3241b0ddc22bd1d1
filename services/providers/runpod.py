"""RunPod serverless endpoints (https://api.runpod.ai/v2/{endpoint_id}) as providers.

The catalog's `models` name one endpoint id per task, so any model you deploy on a RunPod GPU
worker (an image describer, a product-copy writer, a voice-cloning TTS, ...) plugs in as a
provider. The wire calls are RunPod's: POST /{endpoint}/run {"input": ...} answers
{"id", "status"}; GET /{endpoint}/status/{id} moves IN_QUEUE -> IN_PROGRESS -> COMPLETED |
FAILED | CANCELLED | TIMED_OUT; GET /{endpoint}/stream/{id} hands over what a generator handler
has yielded since the last call; POST /{endpoint}/cancel/{id} stops the job;
GET /{endpoint}/health is the cheap probe behind check(). Auth is `Authorization: Bearer <key>`.

What goes in `input` is up to your worker; genmesh sends one shape for every task:

    {"task": "image-to-text",            # the mesh task name
     "prompt": "...",                    # the job's prompt ("" when it has none)
     "parameters": {"seed": 7, ...},     # only the declared parameters the job set
     "image": "<base64>", "image_media_type": "image/png"}   # the job's input asset, if any:
                                         # "image", "audio" or "file" by its media type

and reads back, from the job's `output`:

  * a string: the text, for text tasks; for file tasks a URL, a data URI or raw base64;
  * an object with any of "text", "image", "images", "audio", "video", "file", "files"
    (each file a URL, a data URI, raw base64 typed by a sibling "media_type", or an object
    {"url" | "data", "media_type"}), or "error" (the job fails with it);
  * a list (a generator handler's aggregated stream): each item read as above, texts joined.

While the job runs, progress comes from `runpod.serverless.progress_update(job, value)`
(the status' output: a number is a percent, a string a message, an object may carry
"percent", "message" and "preview", a small image) and, for generator handlers, from the
stream's chunks in the same shapes, where "text" pieces are partial output. A worker that
raises ValueError (or fails with a message starting "invalid input") fails the job as invalid
input; any other failure is fatal, a TIMED_OUT job retryable.

Options: `stream` (default true) polls /stream as well while the job runs, `policy` is
passed through as the job's RunPod policy ({"executionTimeout": ms, "ttl": ms}), `max_wait`
bounds how long one delivery polls.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genmesh.v1 import job_pb2
from services.common.tasks import TEXT_TASKS, task_name
from services.providers.adapter import (
    Fatal,
    InvalidInput,
    JobContext,
    Output,
    ProviderError,
    Result,
    Retryable,
)
from services.providers.base import ConfiguredAdapter, cancel_remote
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP, bearer
from services.providers.params import INT, NUM, STR, Param
from services.providers.probe import CachedProbe
from services.providers.remote import (
    RemoteFiles,
    is_file_reference,
    json_or_none,
    sniff_media_type,
)

log = logging.getLogger(__name__)

Task = job_pb2.Task
T2T = job_pb2.TASK_TEXT_TO_TEXT
T2I = job_pb2.TASK_TEXT_TO_IMAGE
I2I = job_pb2.TASK_IMAGE_TO_IMAGE
I2T = job_pb2.TASK_IMAGE_TO_TEXT
T2S = job_pb2.TASK_TEXT_TO_SPEECH
S2T = job_pb2.TASK_SPEECH_TO_TEXT
I2V = job_pb2.TASK_IMAGE_TO_VIDEO

IMAGE_TASKS = (T2I, I2I)
# How output files are named, by task.
_STEMS = {T2I: "image", I2I: "image", T2S: "speech", I2V: "video"}
_FILE_KEYS = ("image", "images", "audio", "video", "file", "files")
DEFAULT_MAX_WAIT = 3600.0


class RunPodAdapter(ConfiguredAdapter):
    """Your own models on RunPod serverless endpoints, one endpoint id per task."""

    family = "runpod"
    option_keys = ("stream", "policy", "max_wait", "health_ttl")
    summary = "Self-hosted models on RunPod serverless GPU endpoints, one endpoint per task."
    needs_models = True
    params = (
        Param("seed", INT, "Makes the output reproducible.", None, 0, 2**32 - 1),
        Param("width", INT, "Image width in pixels.", None, 64, 4096, tasks=IMAGE_TASKS),
        Param("height", INT, "Image height in pixels.", None, 64, 4096, tasks=IMAGE_TASKS),
        Param("steps", INT, "Denoising steps.", None, 1, 200, tasks=(*IMAGE_TASKS, I2V)),
        Param("guidance", NUM, "Prompt guidance scale.", None, 0, 30, tasks=(*IMAGE_TASKS, I2V)),
        Param(
            "negative_prompt", STR, "What the output should avoid.", None, tasks=(*IMAGE_TASKS, I2V)
        ),
        Param("strength", NUM, "How much the input image may change.", None, 0, 1, tasks=(I2I,)),
        Param("system_prompt", STR, "Instructions ahead of the prompt.", None, tasks=(T2T, I2T)),
        Param("max_tokens", INT, "Longest answer, in tokens.", None, 1, 32_768, tasks=(T2T, I2T)),
        Param("temperature", NUM, "Sampling temperature.", None, 0, 2, tasks=(T2T, I2T)),
        Param("voice", STR, "Voice (or cloned speaker) your worker knows.", None, tasks=(T2S,)),
        Param("speed", NUM, "Speaking rate.", None, 0.25, 4, tasks=(T2S,)),
        Param(
            "format",
            STR,
            "Audio file format.",
            None,
            allowed=("wav", "mp3", "ogg", "flac"),
            tasks=(T2S,),
        ),
        Param("language", STR, "Language code (en, de, ...).", None, tasks=(T2S, S2T)),
        Param("duration_seconds", NUM, "Video length.", None, 0.5, 60, tasks=(I2V,)),
        Param("fps", INT, "Video frames per second.", None, 1, 60, tasks=(I2V,)),
    )

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._http = self.own(ProviderHTTP(config, headers=bearer(config)))
        self._files = self.own(RemoteFiles(config, self._http))
        self._stream = config.option_flag("stream", True)
        self._policy = config.options.get("policy")
        self._max_wait = config.option_number("max_wait", DEFAULT_MAX_WAIT)
        self.probe = CachedProbe(self._health, config.option_number("health_ttl", 60))
        # One handler serves every task: the worker, not genmesh, knows what to do with it.
        self.handlers = {task: self._job for task in (T2T, T2I, I2I, I2T, T2S, S2T, I2V)}

    async def _health(self) -> None:
        for endpoint in sorted(set(self.config.models.values())):
            await self._http.json("GET", f"/{endpoint}/health")

    # --- one job -------------------------------------------------------------------------

    async def _job(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        task = ctx.job.spec.task
        endpoint = self.model(task)
        job_id = await ctx.previous_request_id()
        status = await self._resumable(endpoint, job_id) if job_id else None
        if status is None:
            body: dict[str, Any] = {"input": await _job_input(ctx, p)}
            if self._policy:
                body["policy"] = dict(self._policy)
            created = await self._http.json("POST", f"/{endpoint}/run", json=body)
            new_id = created.get("id") if isinstance(created, dict) else None
            if not isinstance(new_id, str) or not new_id:
                raise Retryable("bad_response", f"{self.name} accepted the job without an id")
            job_id = new_id
            await ctx.record_request_id(job_id)
            status = created
        watch = _Watch()
        try:
            output = await self._wait(ctx, endpoint, job_id, status, watch)
        except asyncio.CancelledError:
            await cancel_remote(
                f"{self.name} job {job_id}",
                lambda: self._http.request("POST", f"/{endpoint}/cancel/{job_id}"),
            )
            raise
        return await self._result(task, output, watch)

    async def _resumable(self, endpoint: str, job_id: str) -> dict[str, Any] | None:
        """An earlier delivery's job, unless RunPod forgot it or it ended badly (a retry then
        pays for a fresh run)."""
        status = await json_or_none(self._http, "GET", f"/{endpoint}/status/{job_id}")
        if not isinstance(status, dict) or status.get("status") in (
            "FAILED",
            "CANCELLED",
            "TIMED_OUT",
        ):
            log.info("%s: job %s cannot be resumed; running anew", self.name, job_id)
            return None
        return status

    async def _wait(
        self,
        ctx: JobContext,
        endpoint: str,
        job_id: str,
        status: dict[str, Any],
        watch: _Watch,
    ) -> Any:
        """Poll until the job ends; the COMPLETED output."""
        deadline = time.monotonic() + self._max_wait
        while True:
            state = status.get("status")
            if state == "COMPLETED":
                output = status.get("output")
                if output is None and self._stream:
                    await self._drain(ctx, endpoint, job_id, watch)
                return output
            if state == "FAILED":
                raise _failure(self.name, status.get("error"))
            if state == "TIMED_OUT":
                raise Retryable("timed_out", f"{self.name}: the worker ran out of time")
            if state == "CANCELLED":
                raise Fatal("cancelled_at_provider", f"{self.name} cancelled the job")
            if state == "IN_QUEUE":
                await watch.report(ctx, None, "queued, waiting for a worker")
            elif state == "IN_PROGRESS":
                await self._progress(ctx, status.get("output"), watch)
                if self._stream:
                    await self._drain(ctx, endpoint, job_id, watch)
            else:
                raise Retryable("bad_response", f"{self.name} reported unknown status {state!r}")
            if time.monotonic() >= deadline:
                raise Retryable(
                    "still_running",
                    f"{self.name} did not finish within {self._max_wait:g}s; will resume",
                )
            await asyncio.sleep(self.config.poll_interval)
            polled = await self._http.json("GET", f"/{endpoint}/status/{job_id}")
            if not isinstance(polled, dict):
                raise Retryable("bad_response", f"{self.name} answered a poll with no status")
            status = polled

    async def _drain(self, ctx: JobContext, endpoint: str, job_id: str, watch: _Watch) -> None:
        """Take what a generator handler yielded since the last call."""
        streamed = await self._http.json("GET", f"/{endpoint}/stream/{job_id}")
        chunks = streamed.get("stream") if isinstance(streamed, dict) else None
        for chunk in chunks or []:
            output = chunk.get("output") if isinstance(chunk, dict) else chunk
            watch.chunks.append(output)
            # A chunk's text is partial output, not a status line: count it, do not show it.
            text = output if isinstance(output, str) else None
            if isinstance(output, dict) and isinstance(output.get("text"), str):
                text = output["text"]
            if text is not None:
                watch.received += len(text)
                await watch.report(ctx, watch.percent, f"received {watch.received} characters")
            if isinstance(output, dict):
                await self._progress(ctx, output, watch)

    async def _progress(self, ctx: JobContext, update: Any, watch: _Watch) -> None:
        """A progress_update value (or a streamed chunk's): percent, message, preview."""
        if update is None:
            await watch.report(ctx, None, "running")
        elif isinstance(update, bool):
            return
        elif isinstance(update, int | float):
            await watch.report(ctx, float(update), watch.message or "running")
        elif isinstance(update, str):
            await watch.report(ctx, None, update[:200])
        elif isinstance(update, dict):
            percent = update.get("percent")
            percent = float(percent) if isinstance(percent, int | float) else None
            message = update.get("message")
            if isinstance(message, str):
                await watch.report(ctx, percent, message[:200])
            elif percent is not None:
                await watch.report(ctx, percent, watch.message or "running")
            preview = update.get("preview")
            if isinstance(preview, str | dict):
                await self._preview(ctx, preview, watch)

    async def _preview(self, ctx: JobContext, ref: Any, watch: _Watch) -> None:
        digest = hashlib.sha256(json.dumps(ref, sort_keys=True).encode()).hexdigest()
        if digest in watch.previews:
            return
        watch.previews.add(digest)
        await ctx.preview(await self._file(_FileRef.read(ref, ""), "preview"))

    async def _result(self, task: Task.ValueType, output: Any, watch: _Watch) -> Result:
        texts: list[str] = []
        files: list[_FileRef] = []
        _collect(output, task, texts, files)
        if not texts and not files:
            # A generator handler without an aggregated result: its stream is the output.
            for chunk in watch.chunks:
                _collect(chunk, task, texts, files)
        if task in TEXT_TASKS:
            if not texts:
                raise Fatal("bad_output", f"{self.name}: the worker returned no text")
            return Result(text="".join(texts).strip())
        if not files:
            raise Fatal("bad_output", f"{self.name}: the worker returned no file")
        stem = _STEMS.get(task, "output")
        outputs = []
        for i, ref in enumerate(files):
            outputs.append(await self._file(ref, stem if len(files) == 1 else f"{stem}-{i + 1}"))
        return Result(outputs, text="".join(texts).strip())

    async def _file(self, ref: _FileRef, stem: str) -> Output:
        if is_file_reference(ref.value):
            return await self._files.fetch(ref.value, stem, ref.media_type)
        return self._files.inline(ref.value, stem, ref.media_type)


@dataclass
class _Watch:
    """What one job's polling has seen: the last report, streamed chunks, previews shown."""

    percent: float | None = None
    message: str = ""
    chunks: list[Any] = field(default_factory=list)
    # Characters of partial text the stream has delivered.
    received: int = 0
    previews: set[str] = field(default_factory=set)

    async def report(self, ctx: JobContext, percent: float | None, message: str) -> None:
        if (percent, message) == (self.percent, self.message):
            return
        self.percent, self.message = percent, message
        await ctx.progress(percent, message)


@dataclass
class _FileRef:
    value: str
    media_type: str = ""

    @classmethod
    def read(cls, entry: Any, media_type: str) -> _FileRef:
        """A file entry: a string, or {"url" | "data", "media_type"}."""
        if isinstance(entry, str) and entry:
            return cls(entry, media_type)
        if isinstance(entry, dict):
            value = entry.get("url") or entry.get("data")
            kind = entry.get("media_type") or entry.get("content_type") or media_type
            if isinstance(value, str) and value:
                return cls(value, str(kind))
        raise Fatal("bad_output", "the worker returned a file entry without url or data")


def _collect(value: Any, task: Task.ValueType, texts: list[str], files: list[_FileRef]) -> None:
    """Texts and files of one output value, in the shapes the module docstring lists."""
    if value is None:
        return
    if isinstance(value, str):
        if task in TEXT_TASKS and not is_file_reference(value):
            texts.append(value)
        else:
            files.append(_FileRef(value))
    elif isinstance(value, list):
        for item in value:
            _collect(item, task, texts, files)
    elif isinstance(value, dict):
        error = value.get("error")
        if error:
            raise _failure("the worker", error)
        if isinstance(value.get("text"), str):
            texts.append(value["text"])
        hint = str(value.get("media_type") or "")
        for key in _FILE_KEYS:
            entries = value.get(key)
            for entry in entries if isinstance(entries, list) else [entries]:
                if entry is not None:
                    files.append(_FileRef.read(entry, hint))


def _failure(name: str, error: Any) -> ProviderError:
    """A FAILED job's error: the SDK's JSON ({"error_type", "error_message", ...}) or text."""
    kind, message = "", ""
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        error = parsed if isinstance(parsed, dict) else error
    if isinstance(error, dict):
        kind = str(error.get("error_type", ""))
        message = str(error.get("error_message") or error.get("message") or json.dumps(error))
    else:
        message = str(error or "the job failed")
    text = f"{name}: {message}"[:500]
    if "ValueError" in kind or message.lower().startswith("invalid input"):
        return InvalidInput("rejected_by_worker", text)
    return Fatal("worker_failed", text)


async def _job_input(ctx: JobContext, p: Mapping[str, Any]) -> dict[str, Any]:
    """The input every genmesh job sends its RunPod worker (see the module docstring)."""
    body: dict[str, Any] = {
        "task": task_name(ctx.job.spec.task),
        "prompt": ctx.job.spec.prompt,
        "parameters": {k: v for k, v in p.items() if v is not None},
    }
    if ctx.job.spec.input_asset_ids:
        asset, data = await ctx.read_input(0)
        if not data:
            raise InvalidInput("empty_input", "the input asset is empty")
        media_type = asset.media_type or sniff_media_type(data)
        key = media_type.split("/")[0] if media_type.startswith(("image/", "audio/")) else "file"
        body[key] = base64.b64encode(data).decode("ascii")
        body[f"{key}_media_type"] = media_type
    elif ctx.job.spec.task in (I2I, I2T, S2T, I2V):
        raise InvalidInput("missing_input", "this task needs one input asset")
    return body
