"""The object-store blob backend: asset bytes in an S3-compatible bucket (AWS S3, MinIO,
Ceph, R2, ...), so storage replicas on several machines serve the same blobs."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from services.common.errors import FailedPrecondition, Unavailable
from services.storage.blobs import (
    CHUNK_SIZE,
    READ_BLOCK,
    BlobMissing,
    BlobStoreError,
    Staging,
    blob_path,
    settled,
)

if TYPE_CHECKING:
    from services.storage.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# A single PUT's limit; larger objects need a multipart upload, which this backend does not do.
MAX_OBJECT_BYTES = 5 * 1024**3
# Threads, and pooled connections, for calls to the store. Its own, because a PUT holds one
# for the whole upload: in the loop's default pool (6 threads on two cores) a few slow PUTs
# would stall every download, upload spool and probe in storage.
THREADS = 32
# Error codes an object store answers with when the same request may succeed later.
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable"}
)
# Credentials that have run out: renewed ones (an instance role's, a rotated session token)
# may work on the next try, so the caller is told to retry.
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"})
# Credentials, or a policy, the store refuses: nothing changes until an operator fixes storage's
# configuration, so the caller is told not to retry.
_REFUSED_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "InvalidClientTokenId",
        "AccessDenied",
        "AllAccessDisabled",
    }
)
# What a client is told; the store's address and the error itself go to the log only.
UNREACHABLE = "the object store did not answer; retry later"
EXPIRED = "the object store refused storage's credentials as expired ({code}); retry later"
REFUSED = (
    "the object store refused storage's credentials or access ({code}); an operator must fix "
    "storage's object-store credentials or bucket policy, so retrying will not help"
)

# S3 answers a GET of a missing object with AccessDenied, not NoSuchKey, to a role that may
# not list the bucket (such a role is allowed: see check()), so the blob may simply be gone.
MAYBE_MISSING = (
    "; to a role without s3:ListBucket the store answers this for a missing object too, so "
    "the asset's bytes may be gone"
)


class S3BlobStore(Staging):
    """Blobs as objects <prefix>ab/cd/<sha256>; uploads spool to a local staging directory
    first, so a blob is only ever written whole, with its sha256 for the store to verify."""

    # Other storage replicas write the same bucket: whether a blob is unused cannot be known
    # here, so a blob is never deleted on the strength of this replica's rows alone.
    exclusive = False

    def __init__(self, client: Any, bucket: str, prefix: str, staging: Path) -> None:
        super().__init__(staging)
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="s3")

    @classmethod
    def from_settings(cls, settings: Settings, staging: Path) -> S3BlobStore:
        """A store on the configured bucket. Credentials come from the usual AWS sources
        (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, an instance role), never
        from genmesh's own settings, so they cannot end up in its logs."""
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.storage_s3_endpoint_url or None,
            region_name=settings.storage_s3_region or None,
            config=Config(
                connect_timeout=5,
                read_timeout=30,
                # One try: the caller retries (a worker's storage calls), and retries nested
                # in retries multiply the wait.
                retries={"total_max_attempts": 1},
                # Path-style addressing works on every S3-compatible server, virtual hosts not.
                s3={"addressing_style": "path"},
                max_pool_connections=THREADS,
            ),
        )
        return cls(client, settings.storage_s3_bucket, settings.storage_s3_prefix, staging)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> None:
        """BlobStoreError when the bucket is missing, or the store cannot be used as
        configured (no credentials, a bad name, credentials it refuses, by S3's error code);
        Unavailable when it does not answer."""
        try:
            await self._call(partial(self._client.head_bucket, Bucket=self.bucket))
        except ClientError as exc:
            status = _status(exc)
            if status == 403:
                # HeadBucket needs s3:ListBucket, which a role that only reads and writes
                # objects lacks; whether it may do that shows on the first call.
                log.warning("bucket %r refused HeadBucket (403); going on", self.bucket)
                return
            if status == 404:
                raise BlobStoreError(f"bucket {self.bucket!r} does not exist") from exc
            raise BlobStoreError(await self._refused(status)) from exc

    async def _refused(self, status: int) -> str:
        """What to say of the bucket refusing HeadBucket with HTTP `status`. A HEAD's answer
        has no body to say why (an expired token is a bare 400), so the bucket is asked again
        with a GET, whose refusal is told as any call's is (see _refusal)."""
        try:
            await self._call(partial(self._client.get_bucket_location, Bucket=self.bucket))
        except (Unavailable, FailedPrecondition) as refused:
            return f"bucket {self.bucket!r}: {refused.message}"
        except ClientError as again:
            # Not a refusal of credentials: its code (a wrong region's
            # AuthorizationHeaderMalformed, say) is what there is to go on.
            return f"bucket {self.bucket!r} answered HTTP {status} ({_code(again)})"
        return f"bucket {self.bucket!r} answered HTTP {status}"

    def object_key(self, key: str) -> str:
        return self.prefix + blob_path(key)

    async def put(self, temp: Path, sha256: str) -> str:
        try:
            await self._call(partial(self._put_file, temp, sha256))
        finally:
            await settled(asyncio.to_thread(temp.unlink, missing_ok=True))
        return sha256

    async def put_bytes(self, data: bytes, sha256: str) -> str:
        await self._call(partial(self._put_object, data, len(data), sha256))
        return sha256

    async def read(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        if length == 0:
            return
        end = "" if length is None else str(offset + length - 1)
        ranged = {"Range": f"bytes={offset}-{end}"} if offset or length is not None else {}
        body = _Body(
            partial(self._client.get_object, Bucket=self.bucket, Key=self.object_key(key), **ranged)
        )
        try:
            try:
                await self._call(body.open)
            except ClientError as exc:
                if _status(exc) == 404:  # NoSuchKey
                    raise BlobMissing(key) from exc
                raise
            while True:
                block = await self._call(partial(body.read, READ_BLOCK))
                if not block:
                    return
                for start in range(0, len(block), chunk_size):
                    yield block[start : start + chunk_size]
        finally:
            # An early stop (a client that hung up) must not leave the response open, even
            # one that came while the GET was still going.
            await settled(self._call(body.close))

    async def delete(self, key: str) -> None:
        await self._call(
            partial(self._client.delete_object, Bucket=self.bucket, Key=self.object_key(key))
        )

    async def exists(self, key: str) -> bool:
        return await self._call(partial(self._exists, key))

    # ---- in the store's threads -----------------------------------------------------

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def _put_file(self, temp: Path, sha256: str) -> None:
        with open(temp, "rb") as f:
            self._put_object(f, temp.stat().st_size, sha256)

    def _put_object(self, body: Any, size: int, sha256: str) -> None:
        # Content-addressed: an object already under the hash holds these very bytes.
        try:
            if self._exists(sha256):
                return
        except ClientError as exc:
            # S3 answers 403, not 404, for a missing object to a role that may not list the
            # bucket; such a role may still put, so not knowing is no reason to stop. A HEAD's
            # refusal has no body to say why (400 for an expired token): the PUT's answer will.
            if _status(exc) not in (400, 403):
                raise
        self._client.put_object(
            Bucket=self.bucket,
            Key=self.object_key(sha256),
            Body=body,
            ContentLength=size,
            # The store checks the bytes it received against the hash and refuses a mismatch
            # (BadDigest), so no torn or altered object is ever stored under a hash.
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
        )

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._threads, fn)
        except (BotoConnectionError, HTTPClientError, IncompleteReadError) as exc:
            log.warning("object store call failed: %s", exc)
            raise Unavailable(UNREACHABLE) from exc
        except (NoCredentialsError, PartialCredentialsError, ParamValidationError) as exc:
            raise BlobStoreError(f"the object store cannot be used as configured: {exc}") from exc
        except ClientError as exc:
            if _transient(exc):
                log.warning("object store call failed: %s", exc)
                raise Unavailable(
                    f"the object store is busy or failing ({_code(exc)}); retry later"
                ) from exc
            refused = _refusal(exc)
            if refused is None:
                raise
            # The code and the call only: S3's error body echoes the access key id and the
            # session token, which botocore keeps in the error (hence no chaining).
            log.warning(
                "object store refused %s on bucket %r: %s (HTTP %d)",
                exc.operation_name,
                self.bucket,
                _code(exc),
                _status(exc),
            )
            raise refused from None


class _Body:
    """A GET's response body whose GET, reads and close take turns: a cancelled download's
    close must wait for a GET or read still going in another thread, then close what it got
    (cancelling the await does not stop the thread, whose answer would be dropped unclosed)."""

    def __init__(self, get: Callable[[], dict[str, Any]]) -> None:
        self._get = get
        self._body: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if not self._closed:
                self._body = self._get()["Body"]

    def read(self, size: int) -> bytes:
        with self._lock:
            return bytes(self._body.read(size))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._body is not None:
                self._body.close()
                self._body = None


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))


def _refusal(exc: ClientError) -> Unavailable | FailedPrecondition | None:
    """What the caller is told of a refusal of storage's credentials or access, by S3's error
    code alone; None for any other error."""
    code = _code(exc)
    if code in _EXPIRED_CODES:
        return Unavailable(EXPIRED.format(code=code))
    if code not in _REFUSED_CODES:
        return None
    said = REFUSED.format(code=code)
    if code == "AccessDenied" and exc.operation_name == "GetObject":
        said += MAYBE_MISSING
    return FailedPrecondition(said)


def _transient(exc: ClientError) -> bool:
    status = _status(exc)
    return status >= 500 or status == 429 or _code(exc) in _TRANSIENT_CODES
