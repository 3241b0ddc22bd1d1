"""`python -m gateway`: serve the HTTP bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from gateway.stopping import LiveStreams
from services.common.logs import setup_logging
from services.common.run import loop_factory

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """uvicorn's server, except that stopping first ends the live streams cleanly, and a
    graceful stop on a signal exits 0 like the gRPC services (uvicorn re-raises the signal
    afterwards, so supervisors would see 143)."""

    def __init__(self, config: uvicorn.Config, streams: LiveStreams) -> None:
        super().__init__(config)
        self.streams = streams

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn's own shutdown: it would close WebSockets 1012 at once, then wait out
        # the graceful timeout for the SSE streams, which never end on their own, and cancel
        # them mid-response. Ended first, each stream finishes cleanly (see gateway.stopping).
        # No new connections meanwhile (a stream opened now would end at once), and half the
        # grace each, so a stream stuck on a client that stopped reading cannot make the two
        # waits together outlast a supervisor's patience.
        for server in self.servers:
            server.close()
        grace = self.config.timeout_graceful_shutdown
        if grace is not None:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await self.streams.stop(within=grace / 2)
            # At least a second: uvicorn's own wait, even for nothing, times out (and logs
            # an ERROR) at once with none.
            left = math.ceil(grace - (loop.time() - started))
            self.config.timeout_graceful_shutdown = max(1, left)
        else:
            await self.streams.stop(within=None)
        await super().shutdown(sockets)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        sigs = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def main() -> None:
    settings = Settings.load(os.environ)
    setup_logging(settings.log_level, "gateway")
    host, port = settings.host_port()
    streams = LiveStreams()
    config = uvicorn.Config(
        create_app(settings, streams),
        host=host,
        port=port,
        log_config=None,  # keep setup_logging's format
        log_level=settings.log_level.lower(),
        lifespan="on",
        # On a signal: stop accepting, give requests this long, then run the lifespan's exit.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace)),
        proxy_headers=False,
    )
    # On the loop GENMESH_EVENT_LOOP names, like the gRPC services.
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(_Server(config, streams).serve())
    log.info("gateway stopped")


if __name__ == "__main__":
    main()
