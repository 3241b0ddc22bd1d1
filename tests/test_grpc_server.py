"""The error interceptor's wrapping of a server-streaming handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.common.grpc_server import _parsed, _wrap_stream


async def test_closing_the_wrapped_stream_closes_the_handlers_generator() -> None:
    # A caller that hangs up closes the wrapper; the handler's generator (which holds a blob
    # file in DownloadAsset) was left to the garbage collector, sometimes after the loop closed.
    closed = []

    async def handler(request: Any, context: Any) -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    stream = _wrap_stream(handler, "/test/Stream", _parsed)(object(), None)
    assert await anext(stream) == 1
    await stream.aclose()
    assert closed == [True]
