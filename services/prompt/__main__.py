"""`python -m services.prompt`: serve PromptService until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from services.common.grpc_server import grpc_server
from services.common.logs import setup_logging
from services.prompt.servicer import registration
from services.prompt.settings import Settings

log = logging.getLogger("services.prompt")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve on settings.listen until `stop` is set, then stop gracefully."""
    async with grpc_server(
        settings.listen,
        [registration(settings.prompt_max_length)],
        grace=settings.shutdown_grace,
    ) as running:
        host = settings.listen.rpartition(":")[0]
        # The real port matters when listen ends in :0 (tests and ad-hoc runs read it here).
        log.info("PromptService listening on %s:%d", host, running.port)
        await stop.wait()
        log.info("stopping")


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main() -> None:
    settings = Settings.from_env(os.environ)
    setup_logging(settings.log_level, "prompt")
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
