"""Blob backends: where asset bytes live, addressed by their sha256."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, TypeVar

from services.common.errors import CannotStart

CHUNK_SIZE = 64 * 1024
# Bytes read per trip to the thread pool; sliced into CHUNK_SIZE pieces for the wire.
READ_BLOCK = 1024 * 1024

_SHA256 = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


class BlobStoreError(CannotStart):
    """The configured blob store cannot be used (a bucket missing or refused, a directory not
    writable); raised at start."""


class BlobMissing(Exception):
    """A blob a row refers to is not in the store (deleted behind storage's back, or lost)."""


def blob_path(key: str) -> str:
    """Where blob `key` (its sha256) lives below a backend's root: ab/cd/<sha256>."""
    if not _SHA256.fullmatch(key):
        raise ValueError(f"not a blob key: {key!r}")
    return f"{key[:2]}/{key[2:4]}/{key}"


class BlobStore(Protocol):
    """Content-addressed blob storage; asset rows hold the keys it returns."""

    # Whether this process alone writes these blobs, so that one no row of its own refers to
    # may be deleted (another process could be storing the same bytes for a new row).
    exclusive: bool

    def temp_path(self) -> Path:
        """A fresh local path to spool an upload to before put(); nothing is created yet."""
        ...

    async def put(self, temp: Path, sha256: str) -> str:
        """Store a finished temp file under its hash, consuming it; returns the blob key."""
        ...

    async def put_bytes(self, data: bytes, sha256: str) -> str:
        """Store bytes already in memory under their hash; returns the blob key."""
        ...

    def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        """The bytes [offset, offset + length) in chunks; length None reads to the end.
        BlobMissing, from the first step, when there is no such blob."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    def close(self) -> None:
        """Release what the store holds (threads, connections); called once, at stop."""
        ...


def make_writable(directory: Path) -> None:
    """Make `directory` (and its parents) if missing and write a file in it, so that one
    storage cannot use fails at start rather than on every upload; OSError if not."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
        pass


class Staging:
    """A local directory uploads are spooled to before a backend takes them whole."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging

    def temp_path(self) -> Path:
        return self.staging / f"upload-{uuid.uuid4().hex}"

    def staged(self) -> list[Path]:
        """Temp files still in the staging area (tests assert failed uploads leave none)."""
        return sorted(self.staging.glob("*")) if self.staging.exists() else []


class LocalBlobStore(Staging):
    """Blobs as files under root/ab/cd/<sha256>, renamed into place only when complete."""

    # One storage process per blob directory (its per-hash locks are in-process).
    exclusive = True

    def __init__(self, root: Path) -> None:
        # Staging inside root, so os.replace stays on one filesystem and is atomic.
        super().__init__(root / "tmp")
        self.root = root

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def path_of(self, key: str) -> Path:
        return self.root / blob_path(key)

    async def put(self, temp: Path, sha256: str) -> str:
        await asyncio.to_thread(self._put, temp, self.path_of(sha256))
        return sha256

    async def put_bytes(self, data: bytes, sha256: str) -> str:
        final = self.path_of(sha256)
        # Content-addressed: bytes stored before need only a stat, not a thread hop.
        if not final.exists():
            await asyncio.to_thread(self._put_bytes, data, self.temp_path(), final)
        return sha256

    @classmethod
    def _put_bytes(cls, data: bytes, temp: Path, final: Path) -> None:
        if final.exists():
            return
        temp.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "xb") as f:
                f.write(data)
            cls._put(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _put(temp: Path, final: Path) -> None:
        if final.exists():
            # Same hash, same bytes, and only complete files are ever renamed in.
            temp.unlink()
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        # Data reaches the disk before the name does, so a crash never leaves a torn blob.
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, final)
        _fsync_dir(final.parent)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        f = ThreadFile(self.path_of(key), "rb")
        try:
            try:
                await f.run(lambda fh: fh.seek(offset))  # opens the file
            except FileNotFoundError as exc:
                raise BlobMissing(key) from exc
            remaining = length
            while remaining is None or remaining > 0:
                want = READ_BLOCK if remaining is None else min(READ_BLOCK, remaining)
                block = await f.run(partial(_read, want))
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                for start in range(0, len(block), chunk_size):
                    yield block[start : start + chunk_size]
        finally:
            await f.aclose()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_of(key).unlink, missing_ok=True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_of(key).exists)


class ThreadFile:
    """A file whose blocking calls run in worker threads, one at a time, opened on first use.

    Cancelling an await does not stop its thread, so every call holds a lock and close waits
    for it: a cancelled task never leaks the file, nor closes or unlinks it mid-write. Nor is
    the close itself withdrawn by a cancellation (see settled).
    """

    def __init__(self, path: Path, mode: Literal["rb", "xb"]) -> None:
        self.path = path
        self._mode = mode
        self._file: BinaryIO | None = None
        self._closed = False
        self._lock = threading.Lock()

    async def run(self, op: Callable[[BinaryIO], T]) -> T:
        """op(file) in a thread."""
        return await asyncio.to_thread(self._call, op)

    async def aclose(self, *, unlink: bool = False) -> None:
        """Close (and optionally delete) the file once any running call is done."""
        await settled(asyncio.to_thread(self._close, unlink))

    def _call(self, op: Callable[[BinaryIO], T]) -> T:
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path.name} is closed")
            if self._file is None:
                if self._mode == "xb":
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, self._mode)  # noqa: SIM115 - closed in _close
            return op(self._file)

    def _close(self, unlink: bool) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
            if unlink:
                self.path.unlink(missing_ok=True)


async def settled(job: Awaitable[T]) -> T:
    """Await `job`, a clean-up run in a thread, to its end even when cancelled meanwhile;
    the cancellation is raised once it has ended.

    A cancelled await of a job still queued for the thread pool withdraws it: a download whose
    client hung up as its read ended (its close queued behind other calls) left the blob file
    open for the garbage collector. The job runs in a task of its own, so a second
    cancellation stops the waiting but still not the job."""
    task = asyncio.ensure_future(job)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise


def _read(size: int, f: BinaryIO) -> bytes:
    return f.read(size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
