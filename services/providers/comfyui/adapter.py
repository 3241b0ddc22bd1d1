"""The ComfyUI adapter: queue an API-format workflow, follow it live, fetch what it saved.

A job's WebSocket client id is derived from the job id, so a redelivered job that resumes its
recorded prompt reconnects as the same client and again receives that prompt's progress and
previews (ComfyUI sends them to the client that queued the prompt).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

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
from services.providers.base import ConfiguredAdapter, cancel_remote
from services.providers.comfyui import workflow
from services.providers.comfyui.api import ComfyClient, PromptState
from services.providers.comfyui.live import Feed, Message, Preview, socket_url
from services.providers.config import ProviderConfig
from services.providers.http import bearer
from services.providers.params import BOOL, INT, NUM, STR, Param, require_multiple
from services.providers.probe import CachedProbe

_T2I = (job_pb2.TASK_TEXT_TO_IMAGE,)
# KSampler's samplers and schedulers present in every ComfyUI release since 2024.
SAMPLERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
    "lcm",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
MAX_SEED = 2**53 - 1

PARAMS = (
    Param("negative_prompt", STR, "What the image should not show.", "", tasks=_T2I),
    Param("seed", INT, "Sampler seed; unset, a random one per job.", None, 0, MAX_SEED, tasks=_T2I),
    Param("steps", INT, "Sampling steps.", 20, 1, 150, tasks=_T2I),
    Param("cfg", NUM, "Classifier-free guidance scale.", 7.0, 0, 30, tasks=_T2I),
    Param("width", INT, "Image width in pixels, a multiple of 8.", 512, 16, 4096, tasks=_T2I),
    Param("height", INT, "Image height in pixels, a multiple of 8.", 512, 16, 4096, tasks=_T2I),
    Param("sampler", STR, "KSampler sampler_name.", "euler", allowed=SAMPLERS, tasks=_T2I),
    Param("scheduler", STR, "KSampler scheduler.", "normal", allowed=SCHEDULERS, tasks=_T2I),
    Param("preview", BOOL, "Publish ComfyUI's live previews.", True, tasks=_T2I),
)
# Fixed, so a job's client id is the same on every worker.
_CLIENT_NAMESPACE = uuid.UUID("5f0c7a52-3c55-4b8e-9a37-0c2f1e7d9b10")
# The worker announces health every few seconds: probe at most this often, this fast.
PROBE_TTL = 15.0
PROBE_TIMEOUT = 5.0
# How long a finished prompt may take to appear in /history (ComfyUI announces success
# before it writes the entry).
_HISTORY_WAIT = 30.0


class ComfyUIAdapter(ConfiguredAdapter):
    """A ComfyUI server; options.workflows maps a task to the user's own workflow file."""

    family = "comfyui"
    option_keys = ("workflows", "preview_interval")
    summary = (
        "A ComfyUI server running API-format workflows, with queue position, step progress "
        "and live previews."
    )
    params = PARAMS

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        # The table is checked now; the files are read when first used, so they may appear later.
        try:
            self._paths = workflow.configured_paths(config.options)
        except workflow.WorkflowError as exc:
            raise config.refuse(str(exc)) from None
        self._headers = bearer(config)
        self._client = self.own(ComfyClient(config, self._headers))
        self._workflows: dict[job_pb2.Task.ValueType, workflow.Workflow] = {}
        self._preview_interval = config.option_number("preview_interval", 1.0)
        self.probe = CachedProbe(self._probe_server, PROBE_TTL)
        self.handlers = {job_pb2.TASK_TEXT_TO_IMAGE: self._text_to_image}

    async def _probe_server(self) -> str:
        try:
            for task in self.tasks:
                self._workflow(task)
            await self._client.system_stats(PROBE_TIMEOUT)
        except ProviderError as exc:
            return exc.message
        return ""

    async def _text_to_image(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        prompt = ctx.job.spec.prompt
        if not prompt.strip():
            raise InvalidInput("missing_prompt", "text-to-image needs a non-empty prompt")
        require_multiple(p, 8)
        seed = p["seed"] if p["seed"] is not None else random.randint(0, MAX_SEED)
        values: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": p["negative_prompt"],
            "seed": seed,
            "steps": p["steps"],
            "cfg": p["cfg"],
            "width": p["width"],
            "height": p["height"],
            "sampler": p["sampler"],
            "scheduler": p["scheduler"],
        }
        return await self._run(ctx, job_pb2.TASK_TEXT_TO_IMAGE, values, p["preview"])

    async def _run(
        self,
        ctx: JobContext,
        task: job_pb2.Task.ValueType,
        values: dict[str, Any],
        previews: bool,
    ) -> Result:
        flow = self._workflow(task)
        if model := self.config.model_for(task):
            values["model"] = model
        try:
            graph = flow.fill(values)
        except workflow.WorkflowError as exc:
            hint = (
                f" (set models.{task_name(task)} in the catalog)" if "{{model}}" in str(exc) else ""
            )
            raise Fatal("bad_workflow", f"{exc}{hint}") from None
        client_id = job_client_id(self.name, ctx.job.id)
        url = socket_url(self.config.base_url, client_id)
        # The socket opens before the prompt is queued, so no early message is missed.
        async with Feed(url, self._headers) as feed:
            previous = await ctx.previous_request_id()
            # Chosen here (newer servers adopt it) so a cancel can name it even mid-queueing.
            prompt_id = previous or str(uuid.uuid4())
            try:
                state = await self._resume(ctx, previous) if previous else None
                if state is None:
                    if previous:
                        prompt_id = str(uuid.uuid4())
                    prompt_id = await self._client.queue(graph, client_id, prompt_id)
                    await ctx.record_request_id(prompt_id)
                watch = _Watch(ctx, prompt_id, flow.class_types(), previews, self._preview_interval)
                entry = await self._follow(feed, watch, state)
            except asyncio.CancelledError:
                what = f"ComfyUI prompt {prompt_id}"
                await cancel_remote(what, functools.partial(self._client.cancel, prompt_id))
                raise
        return Result(await self._outputs(prompt_id, entry))

    async def _resume(self, ctx: JobContext, previous: str) -> PromptState | None:
        """Where the prompt an earlier delivery queued is, or None if ComfyUI forgot it."""
        state = await self._client.state(previous)
        if state is None:
            await ctx.progress(None, f"ComfyUI no longer knows prompt {previous}; queueing anew")
        else:
            await ctx.progress(None, f"resuming ComfyUI prompt {previous} ({state.kind})")
        return state

    async def _follow(
        self, feed: Feed, watch: _Watch, state: PromptState | None
    ) -> Mapping[str, Any]:
        """Report the prompt's progress until it finishes; its history entry."""
        watch.started = state is not None and state.kind == "running"
        while state is None or state.kind != "done":
            if watch.finished:
                return await self._finished_entry(watch.prompt_id)
            # A healthy socket speaks at least once per sampler step; silence beyond a few
            # poll intervals (or no socket at all) means asking the HTTP API instead.
            idle = self.config.poll_interval * (5 if feed.connected else 1)
            item = await feed.next(idle)
            if item is not None:
                await watch.handle(item)
                state = None
                continue
            state = await self._client.state(watch.prompt_id)
            if state is None:
                raise Retryable(
                    "prompt_lost",
                    f"{self.name} lost prompt {watch.prompt_id} (restarted or queue cleared)",
                )
            await watch.polled(state)
        return _checked(self.name, state.entry)

    async def _finished_entry(self, prompt_id: str) -> Mapping[str, Any]:
        deadline = time.monotonic() + _HISTORY_WAIT
        delay = 0.05
        while (entry := await self._client.history(prompt_id)) is None:
            if time.monotonic() > deadline:
                raise Retryable(
                    "no_history", f"{self.name} finished prompt {prompt_id} but kept no history"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.poll_interval)
        return _checked(self.name, entry)

    async def _outputs(self, prompt_id: str, entry: Mapping[str, Any]) -> list[Output]:
        files = _files(entry)
        if not files:
            raise Fatal(
                "no_outputs",
                f"{self.name} prompt {prompt_id} saved no files (does the workflow end in "
                "SaveImage?)",
            )
        outputs = []
        for file in files:
            data, media_type = await self._client.view(file)
            outputs.append(Output(data, media_type, str(file["filename"])))
        return outputs

    def _workflow(self, task: job_pb2.Task.ValueType) -> workflow.Workflow:
        """The task's workflow, loaded once; Fatal when it cannot be used as configured."""
        if task not in self._workflows:
            try:
                flow = workflow.load(self._paths[task])
            except workflow.WorkflowError as exc:
                raise Fatal("bad_workflow", f"{self.name}: {exc}") from None
            if "model" in flow.placeholders() and not self.config.model_for(task):
                raise Fatal(
                    "bad_workflow",
                    f"{self.name}: workflow {flow.source} loads {{{{model}}}} but the catalog "
                    f"names no models.{task_name(task)}",
                )
            self._workflows[task] = flow
        return self._workflows[task]


class _Watch:
    """Turns one prompt's socket messages and poll results into progress, previews, errors."""

    def __init__(
        self,
        ctx: JobContext,
        prompt_id: str,
        class_types: Mapping[str, str],
        previews: bool,
        preview_interval: float,
    ) -> None:
        self.ctx = ctx
        self.prompt_id = prompt_id
        self.class_types = class_types
        self.previews = previews
        self.preview_interval = preview_interval
        self.started = False
        self.finished = False
        self.node = ""
        self.preview_count = 0
        self.last_preview = float("-inf")

    async def handle(self, item: Message | Preview) -> None:
        if isinstance(item, Preview):
            await self._preview(item)
            return
        if item.type == "status":
            status = item.data.get("status")
            info = status.get("exec_info") if isinstance(status, dict) else None
            remaining = info.get("queue_remaining") if isinstance(info, dict) else None
            if not self.started and isinstance(remaining, int):
                await self.ctx.progress(None, f"queued ({remaining} in ComfyUI's queue)")
            return
        if item.prompt_id and item.prompt_id != self.prompt_id:
            return
        handler = getattr(self, f"_on_{item.type}", None)
        if handler is not None:
            await handler(item.data)

    async def polled(self, state: PromptState) -> None:
        if state.kind == "pending":
            await self.ctx.progress(None, f"queued ({state.ahead} ahead in ComfyUI's queue)")

    async def _on_execution_start(self, data: Mapping[str, Any]) -> None:
        self.started = True
        await self.ctx.progress(0.0, "ComfyUI started the workflow")

    async def _on_executing(self, data: Mapping[str, Any]) -> None:
        node = data.get("node")
        if node is None:
            # Older servers end a prompt with executing(node=None) instead of success.
            self.finished = self.started or bool(data.get("prompt_id"))
            return
        self.started = True
        self.node = str(node)
        await self.ctx.progress(None, f"running {self._node_name()}")

    async def _on_progress(self, data: Mapping[str, Any]) -> None:
        value, maximum = data.get("value"), data.get("max")
        if not isinstance(value, int | float) or not isinstance(maximum, int | float):
            return
        if maximum <= 0:
            return
        if data.get("node") is not None:
            self.node = str(data["node"])
        percent = 100.0 * value / maximum
        await self.ctx.progress(percent, f"{self._node_name()} {value:g}/{maximum:g}")

    async def _on_execution_success(self, data: Mapping[str, Any]) -> None:
        self.finished = True

    async def _on_execution_error(self, data: Mapping[str, Any]) -> None:
        raise execution_failure(data)

    async def _on_execution_interrupted(self, data: Mapping[str, Any]) -> None:
        raise Retryable(
            "interrupted", f"ComfyUI interrupted prompt {self.prompt_id} at {_where(data)}"
        )

    async def _preview(self, preview: Preview) -> None:
        if not self.previews or self.finished or not self.started:
            return
        if preview.prompt_id and preview.prompt_id != self.prompt_id:
            return
        now = time.monotonic()
        if now - self.last_preview < self.preview_interval:
            return
        self.last_preview = now
        self.preview_count += 1
        extension = "png" if preview.media_type == "image/png" else "jpg"
        name = f"preview-{self.preview_count}.{extension}"
        await self.ctx.preview(Output(preview.data, preview.media_type, name))

    def _node_name(self) -> str:
        return f"{self.class_types.get(self.node, 'node')} #{self.node}"


def job_client_id(instance: str, job_id: str) -> str:
    """The WebSocket client id every delivery of a job uses with one instance."""
    return str(uuid.uuid5(_CLIENT_NAMESPACE, f"{instance}/{job_id}"))


def execution_failure(data: Mapping[str, Any]) -> ProviderError:
    """A classified error from an execution_error message (or history status message)."""
    kind = str(data.get("exception_type") or "error")
    message = str(data.get("exception_message") or "").strip()
    text = f"ComfyUI failed at {_where(data)}: {kind}: {message}"
    if "OutOfMemory" in kind or "out of memory" in message.lower():
        # Memory held by other prompts frees up: worth another try, or another provider.
        return Retryable("out_of_memory", text)
    return Fatal("execution_error", text)


def _checked(name: str, entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The history entry if the prompt succeeded; its classified failure otherwise."""
    status = entry.get("status") or {}
    if status.get("status_str", "success") == "success":
        return entry
    for message in status.get("messages") or []:
        if not isinstance(message, list) or len(message) != 2:
            continue
        event, data = message
        if event == "execution_error" and isinstance(data, dict):
            raise execution_failure(data)
        if event == "execution_interrupted" and isinstance(data, dict):
            raise Retryable("interrupted", f"{name} interrupted the prompt at {_where(data)}")
    raise Fatal("execution_error", f"{name} reports the prompt failed ({status})")


def _files(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Files the prompt saved: "output" ones, or the temporary ones if it saved none."""
    files: list[Mapping[str, Any]] = []
    for node_output in (entry.get("outputs") or {}).values():
        if not isinstance(node_output, dict):
            continue
        for items in node_output.values():
            if isinstance(items, list):
                files.extend(i for i in items if isinstance(i, dict) and i.get("filename"))
    saved = [f for f in files if f.get("type", "output") == "output"]
    return saved or files


def _where(data: Mapping[str, Any]) -> str:
    return f"{data.get('node_type') or 'node'} #{data.get('node_id', '?')}"
