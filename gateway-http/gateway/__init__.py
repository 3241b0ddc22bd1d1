"""gateway: the HTTP bridge (REST, Server-Sent Events, WebSocket) over the mesh's gRPC services."""
