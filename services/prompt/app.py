"""The running PromptService, as one async context manager."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx

from services.common.grpc_server import RunningServer, grpc_server
from services.prompt.ollama import OllamaCompressor
from services.prompt.optimize import Optimizer
from services.prompt.servicer import registration
from services.prompt.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_prompt(settings: Settings) -> AsyncIterator[RunningServer]:
    """Serve PromptService on settings.listen; on exit, NOT_SERVING then a graceful stop."""
    async with AsyncExitStack() as stack:
        compressor = None
        if settings.prompt_optimizer_url and settings.prompt_optimizer_model:
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=settings.prompt_optimizer_timeout)
            )
            compressor = OllamaCompressor(
                settings.prompt_optimizer_url, settings.prompt_optimizer_model, client
            )
            log.info("long prompts are compressed by %s, else heuristically", compressor.name)
        running = await stack.enter_async_context(
            grpc_server(
                settings.listen,
                [registration(settings.prompt_max_length, Optimizer(compressor))],
                grace=settings.shutdown_grace,
            )
        )
        host = settings.listen.rpartition(":")[0]
        # The real port matters when listen ends in :0 (tests and ad-hoc runs read it here).
        log.info("PromptService listening on %s:%d", host, running.port)
        yield running
        log.info("PromptService stopping")
