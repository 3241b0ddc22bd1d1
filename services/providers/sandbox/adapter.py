"""The sandbox adapter: every task offline, with latency and failures under the caller's control."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, ParamSpec, TypeVar

from genmesh.v1 import job_pb2, provider_service_pb2
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
from services.providers.config import ProviderConfig
from services.providers.params import BOOL, INT, NUM, STR, Param
from services.providers.sandbox import media

P = ParamSpec("P")
T = TypeVar("T")

Task = job_pb2.Task
ParameterType = provider_service_pb2.ParameterType

FAILURE_CODE = "sandbox_injected_failure"
FAIL_KINDS: dict[str, type[ProviderError]] = {
    "invalid_input": InvalidInput,
    "retryable": Retryable,
    "fatal": Fatal,
}
TASKS = tuple(t for t in Task.values() if t != job_pb2.TASK_UNSPECIFIED)
_IMAGE_OUT = (job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_IMAGE)
# Renders or decodes above this many pixels (speech above this many characters) go to a
# thread, so a worker running a thousand jobs keeps its event loop responsive.
_INLINE_PIXELS = 256 * 256
_INLINE_CHARS = 40


_INT, _NUM, _STR, _BOOL = INT, NUM, STR, BOOL
# Parameters a catalog block may fix for an instance: options = { fail_rate = 1.0 }.
_FORCEABLE = ("latency_ms", "fail_rate", "fail_kind", "retry_after_s")

SPECS: tuple[Param, ...] = (
    Param("latency_ms", _INT, "Simulated processing time in milliseconds.", 0, 0, 600_000),
    Param("fail_rate", _NUM, "Probability that the job fails on purpose.", 0.0, 0, 1),
    Param(
        "fail_kind",
        _STR,
        "How an injected failure is classified; invalid_input fails at once, the others "
        "after the latency.",
        "retryable",
        allowed=tuple(FAIL_KINDS),
    ),
    Param(
        "retry_after_s",
        _NUM,
        "Seconds an injected retryable failure asks to wait before a retry, as a provider's "
        "429 Retry-After header does; unset asks nothing.",
        None,
        0,
        3600,
    ),
    Param(
        "seed",
        _INT,
        "Makes the picture and the fail_rate draw reproducible; unset, images use 0 and "
        "failures are drawn at random on every attempt.",
        None,
        0,
        2**32 - 1,
    ),
    Param("steps", _INT, "Progress reports spread over the latency.", 4, 0, 100),
    Param(
        "preview",
        _BOOL,
        "Emit a low-resolution preview halfway through the latency.",
        True,
        tasks=(*_IMAGE_OUT, job_pb2.TASK_IMAGE_TO_VIDEO),
    ),
    Param(
        "width",
        _INT,
        "Image width in pixels; image-to-image shrinks its input to fit width x height.",
        512,
        16,
        2048,
        tasks=_IMAGE_OUT,
    ),
    Param(
        "height",
        _INT,
        "Image height in pixels; image-to-image shrinks its input to fit width x height.",
        512,
        16,
        2048,
        tasks=_IMAGE_OUT,
    ),
    Param(
        "style",
        _STR,
        "The transform applied to the input image.",
        "sepia",
        allowed=media.STYLES,
        tasks=(job_pb2.TASK_IMAGE_TO_IMAGE,),
    ),
    Param(
        "motion",
        _STR,
        "How the still image moves.",
        "zoom",
        allowed=media.MOTIONS,
        tasks=(job_pb2.TASK_IMAGE_TO_VIDEO,),
    ),
    Param(
        "duration_seconds",
        _NUM,
        f"Length of the animated GIF (at most {media.VIDEO_MAX_SIDE} px a side).",
        2.0,
        0.5,
        10,
        tasks=(job_pb2.TASK_IMAGE_TO_VIDEO,),
    ),
    Param(
        "fps",
        _INT,
        "Frames per second of the animated GIF.",
        8,
        1,
        24,
        tasks=(job_pb2.TASK_IMAGE_TO_VIDEO,),
    ),
    Param(
        "response_format",
        _STR,
        "text: a plain reply; json: a JSON object (title, description, keywords, categories) "
        "drawn from the prompt, as product copy.",
        "text",
        allowed=("text", "json"),
        tasks=(job_pb2.TASK_TEXT_TO_TEXT,),
    ),
    Param(
        "max_duration",
        _NUM,
        "Longest speech in seconds (0.08 s per character); text beyond it is not spoken.",
        60.0,
        1,
        600,
        tasks=(job_pb2.TASK_TEXT_TO_SPEECH,),
    ),
)


@dataclass(frozen=True)
class _Params:
    """The job's parameters after checking, every one present (defaults applied here too)."""

    latency_ms: int
    fail_rate: float
    fail_kind: str
    retry_after_s: float | None
    seed: int | None
    steps: int
    preview: bool
    width: int
    height: int
    style: str
    motion: str
    duration_seconds: float
    fps: int
    max_duration: float
    response_format: str

    @classmethod
    def read(cls, raw: Mapping[str, Any]) -> _Params:
        # Parameters the sandbox does not declare are the runtime's business, not ours.
        return cls(**{spec.name: spec.read(raw.get(spec.name)) for spec in SPECS})


@dataclass
class _Work:
    """What a job produces, computed before the simulated latency starts."""

    result: Result
    preview: Output | None = None


class SandboxAdapter:
    """The offline `sandbox` provider; `run` is cancelled (CancelledError) with its job."""

    # The catalog options it reads, as ConfiguredAdapter.option_keys.
    option_keys: ClassVar[tuple[str, ...]] = _FORCEABLE

    def __init__(self, config: ProviderConfig | str = "sandbox") -> None:
        if isinstance(config, str):
            config = ProviderConfig(name=config, family="sandbox")
        self._name = config.name
        self._max_prompt_length = config.max_prompt_length
        self._limits = config.limits()
        # Catalog options that override the job's own parameters, so one instance of
        # several can be made to fail (or be slow) while the others serve normally.
        self._forced = _forced(config)
        # Free, unless the catalog gives the instance a cost (to test cost-aware routing).
        self._cost = max(config.cost_for(task) for task in TASKS)
        self._handlers: dict[int, Callable[[JobContext, _Params], Awaitable[_Work]]] = {
            job_pb2.TASK_TEXT_TO_TEXT: self._text_to_text,
            job_pb2.TASK_TEXT_TO_IMAGE: self._text_to_image,
            job_pb2.TASK_IMAGE_TO_IMAGE: self._image_to_image,
            job_pb2.TASK_TEXT_TO_SPEECH: self._text_to_speech,
            job_pb2.TASK_SPEECH_TO_TEXT: self._speech_to_text,
            job_pb2.TASK_IMAGE_TO_TEXT: self._image_to_text,
            job_pb2.TASK_IMAGE_TO_VIDEO: self._image_to_video,
        }

    @property
    def name(self) -> str:
        return self._name

    def describe(self) -> provider_service_pb2.Provider:
        """Every task, every parameter with its limits, and the catalog's cost (if any)."""
        return provider_service_pb2.Provider(
            name=self._name,
            family="sandbox",
            description=(
                "Offline test provider: real, valid outputs for every task on this machine, "
                "with latency, progress, previews and failures controlled by parameters."
            ),
            tasks=TASKS,
            parameters=[spec.proto() for spec in SPECS],
            offline=True,
            cost_per_job_usd=self._cost,
            max_prompt_length=self._max_prompt_length,
            limits=self._limits,
        )

    async def check(self) -> str:
        """Always usable: it needs no key, binary or network."""
        return ""

    async def aclose(self) -> None:
        """Nothing to release."""

    async def run(self, ctx: JobContext) -> Result:
        """Produce the task's output, then spend latency_ms reporting progress and a preview."""
        task = ctx.job.spec.task
        handler = self._handlers.get(task)
        if handler is None:
            raise InvalidInput("unsupported_task", f"the sandbox does not serve task {task}")
        params = _Params.read({**ctx.parameters, **self._forced})
        failure = _injected_failure(params)
        if isinstance(failure, InvalidInput):
            raise failure  # a real provider rejects a bad request before doing any work
        work = None if failure is not None else await handler(ctx, params)
        preview = work.preview if work is not None and params.preview else None
        await _simulate(ctx, params.latency_ms / 1000, params.steps, preview)
        if failure is not None:
            raise failure
        assert work is not None
        return work.result

    async def _text_to_text(self, ctx: JobContext, p: _Params) -> _Work:
        if p.response_format == "json":
            return _Work(Result(text=media.text_to_json(_prompt(ctx))))
        return _Work(Result(text=media.text_to_text(_prompt(ctx))))

    async def _text_to_image(self, ctx: JobContext, p: _Params) -> _Work:
        prompt, seed = _prompt(ctx), p.seed or 0
        heavy = p.width * p.height > _INLINE_PIXELS
        png = await _compute(heavy, media.text_to_image, prompt, seed, p.width, p.height)
        preview = None
        if p.preview:
            small = media.text_to_image_preview(prompt, seed, p.width, p.height)
            preview = Output(small, "image/png", "preview.png")
        return _Work(Result([Output(png, "image/png", "image.png")]), preview)

    async def _image_to_image(self, ctx: JobContext, p: _Params) -> _Work:
        data = await _input(ctx)
        heavy = media.image_pixels(data) > _INLINE_PIXELS
        png, small = await _compute(heavy, media.image_to_image, data, p.style, p.width, p.height)
        result = Result([Output(png, "image/png", f"{p.style}.png")])
        return _Work(result, Output(small, "image/png", "preview.png"))

    async def _text_to_speech(self, ctx: JobContext, p: _Params) -> _Work:
        prompt = _prompt(ctx)
        heavy = len(prompt) > _INLINE_CHARS
        wav = await _compute(heavy, media.text_to_speech, prompt, p.max_duration)
        return _Work(Result([Output(wav, "audio/wav", "speech.wav")]))

    async def _speech_to_text(self, ctx: JobContext, p: _Params) -> _Work:
        # Only chunk headers are read, never the samples: cheap enough for the event loop.
        return _Work(Result(text=media.speech_to_text(await _input(ctx))))

    async def _image_to_text(self, ctx: JobContext, p: _Params) -> _Work:
        data = await _input(ctx)
        heavy = media.image_pixels(data) > _INLINE_PIXELS
        text = await _compute(heavy, media.image_to_text, data)
        return _Work(Result(text=text))

    async def _image_to_video(self, ctx: JobContext, p: _Params) -> _Work:
        data = await _input(ctx)
        gif, first = await asyncio.to_thread(
            media.image_to_video, data, p.motion, p.duration_seconds, p.fps
        )
        result = Result([Output(gif, "image/gif", "video.gif")])
        return _Work(result, Output(first, "image/png", "preview.png"))


def _forced(config: ProviderConfig) -> dict[str, Any]:
    config.check_options(_FORCEABLE)
    forced = {k: v for k, v in config.options.items() if k in _FORCEABLE}
    specs = {spec.name: spec for spec in SPECS}
    for name, value in forced.items():
        try:
            specs[name].read(value)  # an out-of-range option fails at start-up, not per job
        except InvalidInput as exc:
            raise config.refuse(f"options.{exc.message}") from None
    return forced


def _injected_failure(p: _Params) -> ProviderError | None:
    if p.fail_rate <= 0:
        return None
    draw = random.Random(p.seed).random() if p.seed is not None else random.random()
    if draw >= p.fail_rate:
        return None
    retry_after = p.retry_after_s if p.fail_kind == "retryable" else None
    return FAIL_KINDS[p.fail_kind](
        FAILURE_CODE,
        f"sandbox injected a failure of kind {p.fail_kind} (fail_rate={p.fail_rate:g})",
        retry_after=retry_after,
    )


async def _simulate(ctx: JobContext, latency: float, steps: int, preview: Output | None) -> None:
    """Sleep `latency` seconds with `steps` evenly spaced progress reports, preview at half."""
    # Plain sleeps, so cancelling the job interrupts at once (CancelledError propagates).
    events: list[tuple[float, int, Callable[[], Awaitable[Any]]]] = []
    for i in range(1, steps + 1):
        events.append((latency * i / steps, 0, _reporter(ctx, i, steps)))
    if preview is not None:
        events.append((latency / 2, 1, lambda: ctx.preview(preview)))
    elapsed = 0.0
    for at, _, action in sorted(events, key=lambda e: (e[0], e[1])):
        await asyncio.sleep(at - elapsed)
        elapsed = at
        await action()
    await asyncio.sleep(latency - elapsed)


def _reporter(ctx: JobContext, i: int, steps: int) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.progress(100.0 * i / steps, f"step {i}/{steps}")


async def _compute(heavy: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run heavy work on a thread; small work inline, where a thread hop would cost more."""
    if heavy:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _prompt(ctx: JobContext) -> str:
    prompt = ctx.job.spec.prompt
    if not prompt.strip():
        name = task_name(ctx.job.spec.task)
        raise InvalidInput("missing_prompt", f"{name} needs a non-empty prompt")
    return prompt


async def _input(ctx: JobContext) -> bytes:
    if not ctx.job.spec.input_asset_ids:
        name = task_name(ctx.job.spec.task)
        raise InvalidInput("missing_input", f"{name} needs one input asset")
    _, data = await ctx.read_input(0)
    if not data:
        raise InvalidInput("empty_input", "the input asset is empty")
    return data
