"""An S3-compatible object store on loopback for storage's object-store backend: moto's
server, which speaks S3's REST wire format (signed requests, ranged GETs, checksums); and a
store that refuses every object call with one of S3's credential errors."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from starlette.requests import Request
from starlette.responses import Response

from tests.fakes.server import serving
from tests.infra import unique

# Any credentials do for the fake; set so botocore never looks further (a profile, IMDS).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "genmesh-test",
    "AWS_SECRET_ACCESS_KEY": "genmesh-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class ObjectStore:
    endpoint_url: str

    def client(self) -> Any:
        """A boto3 S3 client, for tests to look into buckets behind storage's back."""
        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint_url)

    def new_bucket(self) -> str:
        name = unique("genmesh-test").lower().replace("_", "-")
        self.client().create_bucket(Bucket=name)
        return name


@contextmanager
def running_object_store() -> Iterator[ObjectStore]:
    """A fresh moto S3 server on a free loopback port, in a thread of this process."""
    # Its request log (one line per call) would flood the test output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield ObjectStore(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's credentials in the environment, where botocore looks first."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def object_store(aws_credentials: None) -> Iterator[ObjectStore]:
    with running_object_store() as store:
        yield store


# What S3 says with each credential error: its status, message and the request's parts it
# echoes back (a session token, the access key id).
_REFUSALS: dict[str, tuple[int, str, tuple[str, ...]]] = {
    "ExpiredToken": (400, "The provided token has expired.", ("Token-0",)),
    "InvalidAccessKeyId": (
        403,
        "The AWS Access Key Id you provided does not exist in our records.",
        ("AWSAccessKeyId",),
    ),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        ("AWSAccessKeyId",),
    ),
    "AccessDenied": (403, "Access Denied", ()),
}
# Credential refusals, which storage names as such.
REFUSALS = tuple(_REFUSALS)
# A client signing for another region than the bucket's: refused, but not its credentials.
_REFUSALS["AuthorizationHeaderMalformed"] = (
    400,
    "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'",
    (),
)


@asynccontextmanager
async def refusing_object_store(code: str, *, at_start: bool = False) -> AsyncIterator[str]:
    """An object store on loopback that finds every bucket (HeadBucket) and refuses every other
    call as S3 does with `code` (a HEAD with no body); its URL. Credentials gone bad after
    storage started, or with `at_start` before: HeadBucket is refused too."""
    status, message, echoed = _REFUSALS[code]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        await request.body()
        bucket_only = request.url.path.strip("/").count("/") == 0
        if request.method == "HEAD" and bucket_only and not at_start:
            await Response(status_code=200)(scope, receive, send)
            return
        if request.method == "HEAD":
            await Response(status_code=status)(scope, receive, send)
            return
        key_id = re.search(r"Credential=([^/]+)/", request.headers.get("authorization", ""))
        parts = {
            "Token-0": request.headers.get("x-amz-security-token", ""),
            "AWSAccessKeyId": key_id[1] if key_id else "",
        }
        extra = "".join(f"<{name}>{parts[name]}</{name}>" for name in echoed)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
            "<RequestId>4442587FB7D0A2F9</RequestId><HostId>fake</HostId></Error>"
        )
        response = Response(body, status_code=status, media_type="application/xml")
        await response(scope, receive, send)

    async with serving(app) as url:
        yield url
