"""Routes over AssetService: upload (streamed, or small ones as base64 JSON), metadata, and
streamed (optionally ranged) content."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request
from starlette.responses import Response

from gateway import schema
from gateway.bodies import BoundedBodyRoute, fitting
from gateway.conditional import Preconditions, entity_tag, http_date, range_applies
from gateway.convert import to_json, to_message
from gateway.errors import bad_input, documented, error_body
from gateway.forms import UploadForm
from gateway.ids import AssetId
from gateway.state import Clients, ClientsDep, TenantDep
from genmesh.v1 import asset_pb2, asset_service_pb2
from services.storage.client import AssetStream

router = APIRouter()
# The JSON puts: their bodies carry the bytes, so they are refused past a limit before parsing.
puts = APIRouter(route_class=BoundedBodyRoute)


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


_VALIDATORS: dict[str, Any] = {
    "ETag": {
        "description": "The asset's sha256, quoted: a strong validator",
        "schema": {"type": "string"},
    },
    "Last-Modified": {
        "description": "When the asset was stored (an HTTP-date); its bytes never change",
        "schema": {"type": "string"},
    },
}
_CONTENT_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The whole asset, with its media type and length",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        "headers": _VALIDATORS,
    },
    206: {
        "description": "One byte range (Range: bytes=a-b, a- or -n), with Content-Range",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        "headers": _VALIDATORS,
    },
    304: {
        "description": "If-None-Match named the asset's ETag, or (without If-None-Match) "
        "If-Modified-Since is not before Last-Modified: no body",
        "headers": _VALIDATORS,
    },
}


def _preconditions(
    if_match: Annotated[
        list[str] | None, Header(description='412 unless it names the ETag (strong) or is "*"')
    ] = None,
    if_none_match: Annotated[
        list[str] | None, Header(description='304 when it names the ETag (weak) or is "*"')
    ] = None,
    if_modified_since: Annotated[
        str | None,
        Header(description="304 when Last-Modified is not after it; ignored with If-None-Match"),
    ] = None,
    if_unmodified_since: Annotated[
        str | None,
        Header(description="412 when Last-Modified is after it; ignored with If-Match"),
    ] = None,
) -> Preconditions:
    # A list of tags may come split over several lines of the field, which together are
    # the list (RFC 9110, 5.3); only the first line was read.
    return Preconditions(
        None if if_match is None else ", ".join(if_match),
        None if if_none_match is None else ", ".join(if_none_match),
        if_modified_since,
        if_unmodified_since,
    )


PreconditionsDep = Annotated[Preconditions, Depends(_preconditions)]


# The form is read by the route itself, as it arrives, so FastAPI does not describe it.
_UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "UploadAssetForm",
                    "required": ["file"],
                    "properties": {
                        "idempotency_key": {
                            "type": "string",
                            "title": "Idempotency Key",
                            "default": "",
                            "description": "The same key returns the first asset; before `file`",
                        },
                        "file": {
                            "type": "string",
                            "title": "File",
                            "contentMediaType": "application/octet-stream",
                            "description": "The bytes; the part's Content-Type is their type",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/v1/assets",
    status_code=201,
    tags=["assets"],
    response_model=schema.Asset,
    response_model_exclude_none=True,
    responses=documented(408, 413),
    openapi_extra=_UPLOAD_FORM,
)
async def upload_asset(request: Request, clients: ClientsDep, tenant: TenantDep) -> dict[str, Any]:
    """AssetService.UploadAsset from a multipart form (field `file`), streamed through as it
    arrives; `idempotency_key`, if sent, comes before `file`.

    The part's Content-Type becomes the asset's media type (storage sniffs it when absent);
    413 when the file is over the size limit, as soon as that is known; 408 when the body stops
    arriving (GENMESH_HTTP_BODY_TIMEOUT). Nothing is kept of either."""
    form = UploadForm(
        request,
        file_field="file",
        fields={"idempotency_key"},
        max_file=clients.max_upload_bytes,
        body_timeout=clients.body_timeout,
    )
    try:
        fields, part = await form.fields()
        media_type = part.content_type
        if media_type == "application/octet-stream":
            media_type = ""  # what browsers send when they do not know: let storage sniff it
        with bad_input("upload"):
            asset = await clients.assets.upload(
                form.file(),
                tenant=tenant,
                media_type=media_type,
                filename=part.filename or "",
                idempotency_key=fields.get("idempotency_key", ""),
            )
    finally:
        await form.aclose()
    return to_json(asset)


@puts.post(
    "/v1/assets:put",
    status_code=201,
    tags=["assets"],
    response_model=schema.Asset,
    response_model_exclude_none=True,
    responses=documented(408, 413),
)
async def put_asset(
    body: schema.PutAssetRequest,  # type: ignore[valid-type]
    clients: ClientsDep,
    tenant: TenantDep,
) -> dict[str, Any]:
    """AssetService.PutAsset: a small asset's metadata and base64 `data` (at most 1 MiB) in one
    JSON body; the stored asset, as POST /v1/assets returns it.

    400 for no data or a bad media type; 413 for data over 1 MiB (POST /v1/assets takes more),
    over storage's size limit or for a body over the bridge's (nothing is kept)."""
    request = fitting(to_message(body, asset_service_pb2.PutAssetRequest()))
    return to_json(await clients.assets.put(request, tenant=tenant))


@puts.post(
    "/v1/assets:batchPut",
    tags=["assets"],
    response_model=schema.BatchPutAssetsResponse,
    response_model_exclude_none=True,
    responses=documented(408, 413),
)
async def batch_put_assets(
    body: schema.BatchPutAssetsRequest,  # type: ignore[valid-type]
    clients: ClientsDep,
    tenant: TenantDep,
) -> dict[str, Any]:
    """AssetService.BatchPutAssets: 1 to 64 items as POST /v1/assets:put takes them, at most
    2 MiB of data in all; one result per item, in order: its asset, or its own error (`code` is
    the gRPC status number) while the others are stored, hence 200 rather than 201.

    400 for no items or too many; 413 for over 2 MiB of data in all, or a body over the bridge's
    limit (an item over 1 MiB is refused in its result, code 8, RESOURCE_EXHAUSTED, reason
    TOO_LARGE)."""
    request = fitting(to_message(body, asset_service_pb2.BatchPutAssetsRequest()))
    return to_json(await clients.assets.batch_put(request, tenant=tenant))


@router.get(
    "/v1/assets/{asset_id:id}",
    tags=["assets"],
    response_model=schema.Asset,
    response_model_exclude_none=True,
    responses=documented(404),
)
async def get_asset(asset_id: AssetId, clients: ClientsDep, tenant: TenantDep) -> dict[str, Any]:
    """AssetService.GetAsset: the asset's metadata."""
    return to_json(await clients.assets.get(asset_id, tenant=tenant))


@router.get(
    "/v1/assets/{asset_id:id}/content",
    tags=["assets"],
    response_class=StreamingResponse,
    responses={**_CONTENT_DOC, **documented(404, 412, 416)},
)
async def asset_content(
    asset_id: AssetId,
    clients: ClientsDep,
    tenant: TenantDep,
    conditions: PreconditionsDep,
    range: Annotated[str | None, Header()] = None,
    if_range: Annotated[str | None, Header()] = None,
) -> Response:
    """AssetService.DownloadAsset: the bytes with the asset's Content-Type, Content-Length,
    ETag (its sha256, quoted) and Last-Modified (when it was stored); a single Range gives 206
    (served from the RPC's offset/length), several are ignored.

    Conditional requests as RFC 9110 orders them: If-Match not naming the ETag, else
    If-Unmodified-Since before Last-Modified, gives 412; then If-None-Match naming the ETag,
    else If-Modified-Since not before Last-Modified, gives 304. If-Range other than the ETag
    or Last-Modified serves the whole asset, 200, instead of the range."""
    return await _content(asset_id, clients, tenant, conditions, range, if_range)


@router.head("/v1/assets/{asset_id:id}/content", include_in_schema=False)
async def asset_content_head(
    asset_id: AssetId, clients: ClientsDep, tenant: TenantDep, conditions: PreconditionsDep
) -> Response:
    """The status and headers a GET of the content answers, without its body (what `curl -I`
    asks); Range does not apply to HEAD (RFC 9110, section 14.2)."""
    return await _content(asset_id, clients, tenant, conditions, head=True)


async def _content(
    asset_id: str,
    clients: Clients,
    tenant: str,
    conditions: Preconditions,
    range: str | None = None,
    if_range: str | None = None,
    *,
    head: bool = False,
) -> Response:
    """The answer to a GET of an asset's content, or with `head` to a HEAD (without Range)."""
    span = None
    if range or conditions:
        known = await clients.assets.get(asset_id, tenant=tenant)
        etag, modified = entity_tag(known.sha256), _modified(known)
        if conditions.not_modified(etag, modified):
            return Response(status_code=304, headers=_headers(known))
        if range and range_applies(if_range, etag, modified):
            size = known.size_bytes
            try:
                span = parse_range(range, size)
            except Unsatisfiable:
                return JSONResponse(
                    error_body(
                        "OUT_OF_RANGE", f"range {range!r} is outside the asset ({size} bytes)"
                    ),
                    status_code=416,
                    headers={"Content-Range": f"bytes */{size}"},
                )
    offset, length = span or (0, 0)
    if head:
        # Whether the bytes are still there shows only on reading them: a HEAD reads the
        # first, so it fails (DATA_LOSS, 500) where the GET would.
        length = 1
    stream = await clients.assets.open(asset_id, tenant=tenant, offset=offset, length=length)
    asset = stream.asset
    headers = _headers(asset)
    if span:
        headers["Content-Length"] = str(length)
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{asset.size_bytes}"
    else:
        headers["Content-Length"] = str(asset.size_bytes)
    if head:
        async for _ in stream:  # the one byte, so the call ends as a download does
            pass
        return Response(status_code=200, headers=headers)
    return StreamingResponse(_chunks(stream), status_code=206 if span else 200, headers=headers)


def _modified(asset: asset_pb2.Asset) -> datetime:
    """The asset's Last-Modified: its create time, in the whole seconds an HTTP-date holds."""
    return asset.create_time.ToDatetime(tzinfo=UTC).replace(microsecond=0)


def _headers(asset: asset_pb2.Asset) -> dict[str, str]:
    """What every answer about an asset's content says, 304s included (RFC 9110 15.4.5)."""
    return {
        "Content-Type": asset.media_type or "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": entity_tag(asset.sha256),
        "Last-Modified": http_date(_modified(asset)),
    }


async def _chunks(stream: AssetStream) -> AsyncIterator[bytes]:
    # AssetStream cancels its call when this generator is closed early (client gone).
    async for chunk in stream:
        yield chunk
