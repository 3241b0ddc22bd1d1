"""Moving files in and out of AssetService: uploads of inputs, resumable downloads of outputs."""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc

from genmesh.v1 import asset_pb2, asset_service_pb2, asset_service_pb2_grpc
from genmesh_cli.client import CliError
from services.common.tenancy import DEFAULT_TENANT
from services.storage.client import AssetClient

DOWNLOAD_ATTEMPTS = 4
# What a file whose name tells nothing is sent as; storage then sniffs its bytes.
GENERIC_MEDIA_TYPE = "application/octet-stream"

# Types the platform's mimetypes tables may not know, or know only by an x- alias.
_EXTENSIONS = {
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "text/plain": ".txt",
    "application/json": ".json",
}


@dataclass(frozen=True)
class Saved:
    asset: asset_pb2.Asset
    path: Path


def media_type_of(path: Path) -> str:
    """The media type a file's name suggests; application/octet-stream when unknown."""
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or GENERIC_MEDIA_TYPE


def extension_for(media_type: str) -> str:
    base = media_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(base) or mimetypes.guess_extension(base) or ".bin"


def file_name(asset: asset_pb2.Asset) -> str:
    """A safe local name: the asset's own filename (no directories) or its id plus extension."""
    name = Path(asset.filename.replace("\\", "/")).name if asset.filename else ""
    name = re.sub(r"[^\w.\-+ ]", "_", name).strip(" .")
    if not name:
        name = re.sub(r"[^\w\-]", "_", asset.id) or "asset"
    if not Path(name).suffix:
        name += extension_for(asset.media_type)
    return name


def check_inputs(paths: list[Path]) -> None:
    """Fail before any network call when an input file cannot be read."""
    for path in paths:
        if path.is_dir():
            raise CliError(f"input is a directory, not a file: {path}", exit_code=2)
        if not path.is_file():
            raise CliError(f"input file not found: {path}", exit_code=2)
        if path.stat().st_size == 0 and _reads_empty(path):
            # Storage keeps no empty asset: the upload would be refused after the call.
            raise CliError(f"input file is empty: {path}", exit_code=2)


def _reads_empty(path: Path) -> bool:
    """Whether reading `path` gives no bytes: a size of 0 is also what /proc's files say,
    and one that cannot be read is left to the upload to report."""
    try:
        with path.open("rb") as f:
            return not f.read(1)
    except OSError:
        return False


def check_out_dir(path: Path) -> None:
    """Fail before the job runs when its outputs could not be saved under `path`."""
    if path.exists() and not path.is_dir():
        raise CliError(f"--out {path} is not a directory", exit_code=2)
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise CliError(f"--out {path}: {ancestor} is not a directory one can write in", 2)


def check_kinds(paths: list[Path], task: str, accepted: tuple[str, ...] | None) -> None:
    """Refuse, before anything is uploaded, inputs whose name says the task cannot take them;
    a name that says nothing (application/octet-stream) is left to storage to sniff."""
    if accepted is None:
        if paths:
            raise CliError(f"{task} takes no input file; drop --input", exit_code=2)
        return
    for path in paths:
        media_type = media_type_of(path)
        if media_type != GENERIC_MEDIA_TYPE and not media_type.startswith(accepted):
            kinds = "/".join(f"{kind}*" for kind in accepted)
            raise CliError(f"{path} is {media_type}; {task} takes {kinds}", exit_code=2)


async def upload(channel: grpc.aio.Channel, path: Path) -> asset_pb2.Asset:
    """Upload a job input, streamed from disk. Through AssetClient, so that a refusal arrives
    as storage's own status even while the file is still being sent."""
    return await AssetClient(channel).upload_file(
        path, tenant=DEFAULT_TENANT, media_type=media_type_of(path)
    )


def _open_part(path: Path, offset: int) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("r+b" if offset else "wb")
    f.seek(offset)
    f.truncate()
    return f


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def unique_path(directory: Path, name: str, taken: set[Path]) -> Path:
    """`directory/name`, or `name-2.ext`, `name-3.ext`… when another output of the job has it."""
    path = directory / name
    n = 2
    while path in taken:
        path = directory / f"{Path(name).stem}-{n}{Path(name).suffix}"
        n += 1
    taken.add(path)
    return path


async def download(
    stub: asset_service_pb2_grpc.AssetServiceStub, asset: asset_pb2.Asset, path: Path
) -> Saved:
    """Stream an asset to `path` (via a .part file), resuming after a dropped connection."""
    part = path.with_name(path.name + ".part")
    offset = 0
    meta = asset
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        f = _open_part(part, offset)
        try:
            call = stub.DownloadAsset(
                asset_service_pb2.DownloadAssetRequest(asset_id=asset.id, offset=offset)
            )
            async for message in call:
                if message.HasField("asset"):
                    meta = message.asset
                else:
                    f.write(message.chunk)
                    offset += len(message.chunk)
            break
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == DOWNLOAD_ATTEMPTS:
                raise
        finally:
            f.close()
        await asyncio.sleep(0.2 * attempt)
    if meta.size_bytes and offset != meta.size_bytes:
        raise CliError(f"asset {asset.id}: got {offset} bytes, expected {meta.size_bytes}")
    if meta.sha256 and _sha256(part) != meta.sha256.lower():
        raise CliError(f"asset {asset.id}: checksum mismatch; the download is corrupt")
    part.replace(path)
    return Saved(meta, path)
