"""The bridge's settings (GENMESH_LISTEN, GENMESH_ROUTER_ADDR, GENMESH_STORAGE_ADDR,
GENMESH_STREAM_BUFFER)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import ServiceSettings


class Settings(ServiceSettings):
    """Where the bridge listens and which gRPC services it calls."""

    listen: str = "127.0.0.1:8080"
    router_addr: str = "127.0.0.1:50051"
    storage_addr: str = "127.0.0.1:50052"
    # Messages one live connection (WebSocket or SSE) may have waiting for a slow client;
    # past it the client is told it fell behind and resumes by sequence or cursor.
    stream_buffer: int = Field(default=256, ge=1)

    def host_port(self) -> tuple[str, int]:
        """`listen` split for uvicorn; "[::]:8080" becomes ("::", 8080)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
