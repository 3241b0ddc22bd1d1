"""The bridge's settings (GENMESH_LISTEN, GENMESH_ROUTER_ADDR, GENMESH_STORAGE_ADDR)."""

from __future__ import annotations

from services.common.settings import ServiceSettings


class Settings(ServiceSettings):
    """Where the bridge listens and which gRPC services it calls."""

    listen: str = "127.0.0.1:8080"
    router_addr: str = "127.0.0.1:50051"
    storage_addr: str = "127.0.0.1:50052"

    def host_port(self) -> tuple[str, int]:
        """`listen` split for uvicorn; "[::]:8080" becomes ("::", 8080)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
