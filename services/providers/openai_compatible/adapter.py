"""One adapter for every OpenAI-compatible API; each catalog instance configures its own.

OpenAI's endpoints answer synchronously: there is no request to poll or resume, so a
redelivered job sends its request again, and cancelling closes the connection (a streamed
chat completion stops generating when its client goes away)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from genmesh.v1 import job_pb2
from services.providers.adapter import JobContext, ProviderError, Result
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP
from services.providers.openai_compatible import audio, chat
from services.providers.openai_compatible.client import OpenAIHTTP
from services.providers.openai_compatible.images import Images
from services.providers.openai_compatible.options import OPTION_KEYS, Options
from services.providers.openai_compatible.params import PARAMS
from services.providers.params import Param
from services.providers.probe import CachedProbe

# Seconds the reachability probe may take; the worker's health announcements wait on it.
PROBE_TIMEOUT = 5.0


class OpenAICompatibleAdapter(ConfiguredAdapter):
    family: ClassVar[str] = "openai_compatible"
    summary: ClassVar[str] = (
        "An OpenAI-compatible API: streamed chat, vision, image generation and edits, "
        "speech and transcription."
    )
    params: ClassVar[tuple[Param, ...]] = PARAMS
    needs_models: ClassVar[bool] = True
    option_keys: ClassVar[tuple[str, ...]] = OPTION_KEYS

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.options = Options.parse(config)
        headers = self.options.extra_headers()
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._api = self.own(OpenAIHTTP(config, headers=headers))
        self._files = self.own(ProviderHTTP(config))
        self._images = Images(self._api, self._files, self.options)
        self.probe = CachedProbe(self._probe_models, self.options.check_ttl)
        self.handlers = {
            job_pb2.TASK_TEXT_TO_TEXT: self._text,
            job_pb2.TASK_IMAGE_TO_TEXT: self._vision,
            job_pb2.TASK_TEXT_TO_IMAGE: self._draw,
            job_pb2.TASK_IMAGE_TO_IMAGE: self._edit,
            job_pb2.TASK_TEXT_TO_SPEECH: self._speak,
            job_pb2.TASK_SPEECH_TO_TEXT: self._listen,
        }

    async def _probe_models(self) -> str:
        try:
            body = await self._api.json("GET", self.options.check_path, timeout=PROBE_TIMEOUT)
        except ProviderError as exc:
            return exc.message
        if not self.options.check_models:
            return ""
        listed = _model_ids(body)
        # Ollama lists "llama3.2:latest" for the model people call "llama3.2".
        wanted = set(self.config.models.values())
        missing = sorted(m for m in wanted if m not in listed and f"{m}:latest" not in listed)
        return f"{self.name} does not list model {', '.join(missing)}" if missing else ""

    async def _text(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        model = self.model(job_pb2.TASK_TEXT_TO_TEXT)
        messages = chat.text_messages(ctx, params)
        return await chat.complete(self._api, ctx, model, messages, params, self.options)

    async def _vision(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        model = self.model(job_pb2.TASK_IMAGE_TO_TEXT)
        messages = await chat.vision_messages(ctx, params)
        return await chat.complete(self._api, ctx, model, messages, params, self.options)

    async def _draw(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        return await self._images.generate(ctx, self.model(job_pb2.TASK_TEXT_TO_IMAGE), params)

    async def _edit(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        return await self._images.edit(ctx, self.model(job_pb2.TASK_IMAGE_TO_IMAGE), params)

    async def _speak(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        return await audio.speak(self._api, ctx, self.model(job_pb2.TASK_TEXT_TO_SPEECH), params)

    async def _listen(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        model = self.model(job_pb2.TASK_SPEECH_TO_TEXT)
        return await audio.transcribe(self._api, ctx, model, params)


def _model_ids(body: Any) -> set[str]:
    data = body.get("data") if isinstance(body, dict) else None
    return {str(m.get("id")) for m in data or [] if isinstance(m, dict)}
