"""An S3-compatible object store on loopback for storage's object-store backend: moto's
server, which speaks S3's REST wire format (signed requests, ranged GETs, checksums)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

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
