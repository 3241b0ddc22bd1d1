"""Routes over AssetService: upload, metadata, and streamed (optionally ranged) content."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from gateway.convert import to_json
from gateway.errors import error_body
from gateway.state import ClientsDep, TenantDep
from services.storage.client import CHUNK_SIZE, AssetStream

router = APIRouter()

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single `bytes=a-b`, `bytes=a-` or `bytes=-n` as (offset, length); None means serve it
    all (RFC 9110 lets a server ignore what it does not support, e.g. several ranges)."""
    match = _RANGE.match(header)
    if not match or (not match[1] and not match[2]):
        return None
    if not match[1]:  # suffix: the last n bytes
        n = int(match[2])
        if n == 0 or size == 0:
            raise Unsatisfiable
        start = max(size - n, 0)
        return start, size - start
    start = int(match[1])
    if match[2] and int(match[2]) < start:
        return None  # syntactically invalid: ignored, per RFC 9110
    if start >= size:
        raise Unsatisfiable
    end = int(match[2]) if match[2] else size - 1
    end = min(end, size - 1)
    return start, end - start + 1


@router.post("/v1/assets", status_code=201)
async def upload_asset(
    file: UploadFile,
    clients: ClientsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str, Form()] = "",
) -> dict[str, Any]:
    """Multipart upload (field `file`) streamed into AssetService.UploadAsset."""

    async def chunks() -> AsyncIterator[bytes]:
        while block := await file.read(CHUNK_SIZE):
            yield block

    media_type = file.content_type or ""
    if media_type == "application/octet-stream":
        media_type = ""  # what browsers send when they do not know: let storage sniff it
    asset = await clients.assets.upload(
        chunks(),
        tenant=tenant,
        media_type=media_type,
        filename=file.filename or "",
        idempotency_key=idempotency_key,
    )
    return to_json(asset)


@router.get("/v1/assets/{asset_id}")
async def get_asset(asset_id: str, clients: ClientsDep, tenant: TenantDep) -> dict[str, Any]:
    return to_json(await clients.assets.get(asset_id, tenant=tenant))


@router.get("/v1/assets/{asset_id}/content")
async def asset_content(
    asset_id: str,
    clients: ClientsDep,
    tenant: TenantDep,
    range: Annotated[str | None, Header()] = None,
) -> Response:
    """The asset's bytes with its Content-Type; one Range gives 206 via offset/length."""
    span = None
    if range:
        size = (await clients.assets.get(asset_id, tenant=tenant)).size_bytes
        try:
            span = parse_range(range, size)
        except Unsatisfiable:
            return JSONResponse(
                error_body("OUT_OF_RANGE", f"range {range!r} is outside the asset ({size} bytes)"),
                status_code=416,
                headers={"Content-Range": f"bytes */{size}"},
            )
    offset, length = span or (0, 0)
    stream = await clients.assets.open(asset_id, tenant=tenant, offset=offset, length=length)
    asset = stream.asset
    headers = {
        "Content-Type": asset.media_type or "application/octet-stream",
        "Accept-Ranges": "bytes",
    }
    if span:
        headers["Content-Length"] = str(length)
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{asset.size_bytes}"
    else:
        headers["Content-Length"] = str(asset.size_bytes)
    return StreamingResponse(_chunks(stream), status_code=206 if span else 200, headers=headers)


async def _chunks(stream: AssetStream) -> AsyncIterator[bytes]:
    # AssetStream cancels its call when this generator is closed early (client gone).
    async for chunk in stream:
        yield chunk
