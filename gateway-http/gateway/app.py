"""create_app(settings): the FastAPI bridge, its lifespan, the web page and the API document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from swagger_ui_bundle import swagger_ui_path

from gateway import assets, errors, jobs, live
from gateway.handshake import allow_long_cursors
from gateway.query import known_query
from gateway.schema import ErrorBody
from gateway.settings import Settings
from gateway.state import State, open_clients
from gateway.stopping import LiveStreams

STATIC = Path(__file__).parent / "static"

DESCRIPTION = """\
The HTTP face of the genmesh gRPC services: every route is one RPC of `genmesh.v1`, and the
JSON is that RPC's message in proto3 JSON (field names as in the .proto, enums by name,
64-bit integers as strings).

Live status comes three ways, each message carrying the job's event sequence:
a WebSocket per job (`/v1/jobs/{job_id}/ws`), a WebSocket for all of the tenant's jobs
(`/v1/jobs:watch`), and the same two as Server-Sent Events (documented below); a batch
(`POST /v1/batches`) streams the same way (`/v1/batches/{batch_id}/events` and `/ws`). A
reconnecting client passes the last sequence (one job) or cursor (all jobs) it received and
misses nothing; one that reads too slowly is told so (`RESOURCE_EXHAUSTED`, WebSocket close
4429) and resumes the same way.

Errors are `{"error": {"code": <gRPC status name>, "message": …}}` with the mapped HTTP status.
`RESOURCE_EXHAUSTED` is 413 when a body, upload or message is over a size limit (send less)
and 429 when a queue or rate limit is reached (retry later). A body that stops arriving
(GENMESH_HTTP_BODY_TIMEOUT) is a 408 `DEADLINE_EXCEEDED`, and its connection closes.
The `x-genmesh-tenant` header picks the tenant (absent or empty: `default`).
"""


def create_app(settings: Settings, streams: LiveStreams | None = None) -> FastAPI:
    """The bridge; its gRPC channels open in the lifespan, never at import or construction.
    Its live streams end when the server calls `streams.stop()`."""
    live_streams = streams or LiveStreams()
    allow_long_cursors()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with open_clients(settings) as clients:
            yield {"clients": clients, "streams": live_streams}

    app = FastAPI(
        title="genmesh",
        description=DESCRIPTION,
        version="v1",
        lifespan=lifespan,
        # "/v1/jobs/" is no job: a 404, not a redirect to the listing.
        redirect_slashes=False,
        # /docs is served below from the swagger-ui-bundle package: FastAPI's default page
        # loads Swagger UI from a CDN, which an offline machine cannot reach.
        docs_url=None,
        dependencies=[Depends(known_query)],
    )
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(live.router)
    app.include_router(assets.router)
    app.include_router(assets.puts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="genmesh API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    @app.get("/healthz", tags=["bridge"])
    async def healthz() -> dict[str, str]:
        """Liveness of the bridge itself (compose and `genmesh up` wait on it)."""
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # Where a browser looks by itself on a page that names no icon (the API's JSON).
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(
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


def _finish(document: dict[str, Any]) -> dict[str, Any]:
    """Errors are always the JSON error body (even on routes that stream events or bytes), and
    invalid input is a 400 with that body, never FastAPI's 422."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _, definitions = models_json_schema(
        [(ErrorBody, "serialization")], ref_template="#/components/schemas/{model}"
    )
    schemas.update(definitions.get("$defs", {}))
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = error
    return document
