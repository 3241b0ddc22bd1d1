"""create_app(settings): the FastAPI bridge, its lifespan and its small fixed routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from gateway import assets, errors, jobs
from gateway.settings import Settings
from gateway.state import State, open_clients

INDEX_HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>genmesh</title></head>
<body>
<h1>genmesh</h1>
<p><a href="/docs">API documentation</a></p>
<h2>Providers</h2>
<ul id="providers"><li>loading&hellip;</li></ul>
<script>
fetch("/v1/providers").then(r => r.json()).then(body => {
  const list = document.getElementById("providers");
  list.replaceChildren(...(body.providers || []).map(p => {
    const li = document.createElement("li");
    li.textContent = `${p.name} (${p.family}): ${(p.health || {}).status || "unknown"}`;
    return li;
  }));
}).catch(e => {
  document.getElementById("providers").textContent = "could not load providers: " + e;
});
</script>
</body>
</html>
"""


def create_app(settings: Settings) -> FastAPI:
    """The bridge; its gRPC channels open in the lifespan, never at import or construction."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with open_clients(settings) as clients:
            yield {"clients": clients}

    app = FastAPI(title="genmesh", lifespan=lifespan)
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(assets.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness of the bridge itself (compose and `genmesh up` wait on it)."""
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return INDEX_HTML

    return app
