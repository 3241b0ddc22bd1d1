"""create_app(settings): the FastAPI bridge, its lifespan, the web page and the API document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from gateway import assets, errors, jobs, live
from gateway.settings import Settings
from gateway.state import State, open_clients

STATIC = Path(__file__).parent / "static"

DESCRIPTION = """\
The HTTP face of the genmesh gRPC services: every route is one RPC of `genmesh.v1`, and the
JSON is that RPC's message in proto3 JSON (field names as in the .proto, enums by name,
64-bit integers as strings).

Live status comes three ways, each message carrying the job's event sequence:
a WebSocket per job (`/v1/jobs/{job_id}/ws`), a WebSocket for all of the tenant's jobs
(`/v1/jobs:watch`), and the same two as Server-Sent Events (documented below). A reconnecting
client passes the last sequence (one job) or cursor (all jobs) it received and misses nothing;
one that reads too slowly is told so (`RESOURCE_EXHAUSTED`, WebSocket close 4429) and resumes
the same way.

Errors are `{"error": {"code": <gRPC status name>, "message": …}}` with the mapped HTTP status.
The `x-genmesh-tenant` header picks the tenant (default: `default`).
"""


def create_app(settings: Settings) -> FastAPI:
    """The bridge; its gRPC channels open in the lifespan, never at import or construction."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with open_clients(settings) as clients:
            yield {"clients": clients}

    app = FastAPI(title="genmesh", description=DESCRIPTION, version="v1", lifespan=lifespan)
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(live.router)
    app.include_router(assets.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["bridge"])
    async def healthz() -> dict[str, str]:
        """Liveness of the bridge itself (compose and `genmesh up` wait on it)."""
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _without_422(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _without_422(document: dict[str, Any]) -> dict[str, Any]:
    """The bridge answers invalid input with 400 and the error body, never FastAPI's 422."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document
