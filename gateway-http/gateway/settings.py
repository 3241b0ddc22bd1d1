"""The bridge's settings (GENMESH_LISTEN, GENMESH_ROUTER_ADDR, GENMESH_STORAGE_ADDR,
GENMESH_STREAM_BUFFER, GENMESH_STREAM_RESUME_WINDOW, GENMESH_STORAGE_MAX_UPLOAD_BYTES,
GENMESH_STORAGE_TIMEOUT, GENMESH_ROUTER_TIMEOUT, GENMESH_HTTP_BODY_TIMEOUT)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import ListenAddress, ServiceAddress, ServiceSettings
from services.storage.limits import MAX_UPLOAD_BYTES


class Settings(ServiceSettings):
    """Where the bridge listens and which gRPC services it calls."""

    listen: ListenAddress = "127.0.0.1:8080"
    router_addr: ServiceAddress = "127.0.0.1:50051"
    storage_addr: ServiceAddress = "127.0.0.1:50052"
    # Messages one live connection (WebSocket or SSE) may have waiting for a slow client;
    # past it the client is told it fell behind and resumes by sequence or cursor.
    stream_buffer: int = Field(default=256, ge=1)
    # Seconds a live stream with a resume point (one job's, or the feed) keeps re-opening its
    # call when the router serving it is lost, before the client is told; 0: told at once.
    stream_resume_window: float = Field(default=30.0, ge=0)
    # Storage's own setting, by the same name: the bridge refuses a larger upload as it arrives
    # instead of passing it all on for storage to refuse.
    storage_max_upload_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=1)
    # Seconds storage may take over a unary call, or leave one step of a stream waiting.
    storage_timeout: float = Field(default=30.0, gt=0)
    # Seconds the router may take over a unary call, or to open a stream (its first message);
    # an open stream (a watch, Generate) runs as long as the job and the client need.
    router_timeout: float = Field(default=30.0, gt=0)
    # Seconds a request body may leave the bridge waiting for its next bytes (the first counted
    # from when the route starts reading it); past it: 408 and the connection closes. Between
    # pieces, not in all, so a large upload on a slow link is fine and a stalled one is not.
    http_body_timeout: float = Field(default=30.0, gt=0)

    def host_port(self) -> tuple[str, int]:
        """`listen` split for uvicorn; "[::]:8080" becomes ("::", 8080)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
