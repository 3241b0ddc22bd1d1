"""A service started with a bad setting says which, in one line each, and exits 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra import free_port

SECRET = "hunter2-not-for-logs"


def start(module: str, **settings: str) -> list[str]:
    """What `python -m module` printed on stderr; it must have exited 1 without a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr.strip().splitlines()


def test_a_bad_setting_is_named_and_its_value_left_out() -> None:
    lines = start(
        "services.router",
        # A value like this may be a secret, so pydantic's copy of it must not be printed.
        GENMESH_NATS_PREFIX=f"bad prefix {SECRET}",
        GENMESH_ROUTING_MAX_ATTEMPTS="three",
    )
    assert [line.split(": ")[1] for line in lines] == [
        "GENMESH_NATS_PREFIX",
        "GENMESH_ROUTING_MAX_ATTEMPTS",
    ], lines
    assert all(line.startswith("cannot start: ") for line in lines)
    assert SECRET not in "\n".join(lines)


@pytest.mark.parametrize("module", ["services.router", "services.providers", "gateway"])
def test_a_list_of_replica_names_gRPC_cannot_take_is_refused_saying_what_to_write(
    module: str,
) -> None:
    lines = start(module, GENMESH_STORAGE_ADDR="storage-a:50052,storage-b:50052")
    assert len(lines) == 1, lines
    assert lines[0].startswith("cannot start: GENMESH_STORAGE_ADDR: ")
    assert "dns:///NAME:PORT" in lines[0]


@pytest.mark.parametrize(
    ("module", "variable", "value", "said"),
    [
        # Each of these was a traceback from deep in start-up, if anything at all: a port past
        # 65535 was taken as that number less 65536, a service listening or calling there.
        ("services.prompt", "GENMESH_LISTEN", "nonsense", "must be host:port"),
        ("gateway", "GENMESH_LISTEN", "127.0.0.1:99999", "the port 0 to 65535"),
        ("services.providers", "GENMESH_LISTEN", "localhost", "must be host:port"),
        ("services.router", "GENMESH_STORAGE_ADDR", "127.0.0.1:99999", "port must be 1 to 65535"),
        ("gateway", "GENMESH_ROUTER_ADDR", "", "no address"),
        ("services.storage", "GENMESH_LOG_LEVEL", "LOUD", "one of CRITICAL, ERROR"),
        ("services.router", "GENMESH_ROUTING_POLICY", "bogus", "one of: priority, cost"),
        ("services.router", "GENMESH_ROUTING_WEIGHTS", "a=x", "'a=x' is not name=non-negative"),
        ("services.router", "GENMESH_DATA_DIR", __file__, "not a directory"),
        ("services.storage", "GENMESH_DATABASE_URL", "garbage", "postgresql+asyncpg://"),
        (
            "services.router",
            "GENMESH_DATABASE_URL",
            f"postgresql://genmesh:{SECRET}@127.0.0.1/db",
            "postgresql+asyncpg://",
        ),
        # These the service started with: gRPC called port 443 for an address without one,
        # and every call failed UNAVAILABLE, naming neither the setting nor the port.
        ("services.router", "GENMESH_STORAGE_ADDR", "127.0.0.1", "needs a port, e.g. 127.0.0.1:"),
        ("gateway", "GENMESH_ROUTER_ADDR", "routerhost", "needs a port"),
        ("services.providers", "GENMESH_STORAGE_ADDR", "dns:///storage", "needs a port"),
        ("services.router", "GENMESH_PROMPT_ADDR", "::1", "in brackets, then its port"),
        # JetStream took 0 as 1, and refused 6 or more only as the first stream was made.
        ("services.router", "GENMESH_NATS_REPLICAS", "0", "must be 1 to 5"),
        ("services.providers", "GENMESH_NATS_REPLICAS", "-1", "must be 1 to 5"),
        ("services.router", "GENMESH_NATS_REPLICAS", "6", "must be 1 to 5"),
    ],
)
def test_each_bad_setting_is_one_line_naming_it(
    module: str,
    variable: str,
    value: str,
    said: str,
    nats_url: str,
    nats_prefix: str,
    tmp_path: Path,
) -> None:
    # Should a setting no longer be refused, the service it starts shares nothing with others.
    isolated = {
        "GENMESH_LISTEN": "127.0.0.1:0",
        "GENMESH_DATA_DIR": str(tmp_path),
        "GENMESH_NATS_URL": nats_url,
        "GENMESH_NATS_PREFIX": nats_prefix,
    }
    lines = start(module, **{**isolated, variable: value})
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cannot start: {variable}: "), lines
    assert said in lines[0], lines
    assert SECRET not in lines[0]


@pytest.mark.parametrize("module", ["services.prompt", "services.router", "services.storage"])
def test_a_listen_port_in_use_is_one_line_naming_it(
    module: str, nats_url: str, nats_prefix: str, tmp_path: Path
) -> None:
    # gRPC's RuntimeError came up as a traceback ending 'set GRPC_VERBOSITY=debug ...'.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        lines = start(
            module,
            GENMESH_LISTEN=address,
            GENMESH_DATA_DIR=str(tmp_path),
            GENMESH_NATS_URL=nats_url,
            GENMESH_NATS_PREFIX=nats_prefix,
        )
    assert f"cannot start: cannot listen on {address}: " in lines[-1], lines


@pytest.mark.parametrize("module", ["services.router", "services.storage"])
def test_a_database_that_cannot_be_opened_is_one_line_naming_it(
    module: str, nats_url: str, nats_prefix: str, tmp_path: Path
) -> None:
    # Each was a traceback from asyncpg, socket or sqlite3.
    (tmp_path / "a-file").write_text("")
    refused = f"127.0.0.1:{free_port()}"
    for settings, said in (
        (
            {"GENMESH_DATABASE_URL": f"postgresql+asyncpg://genmesh:{SECRET}@{refused}/db"},
            f"cannot open the database postgresql+asyncpg://genmesh:***@{refused}/db: ",
        ),
        (
            {"GENMESH_DATA_DIR": str(tmp_path / "a-file" / "data")},
            f"cannot make the data directory {tmp_path / 'a-file' / 'data'}: Not a directory",
        ),
    ):
        lines = start(
            module,
            GENMESH_LISTEN="127.0.0.1:0",
            GENMESH_NATS_URL=nats_url,
            GENMESH_NATS_PREFIX=nats_prefix,
            **settings,
        )
        assert f"cannot start: {said}" in lines[-1], lines
        assert SECRET not in "\n".join(lines)


@pytest.mark.parametrize(
    ("settings", "variable", "directory", "why"),
    [
        (
            {"GENMESH_STORAGE_DIR": "{tmp}/afile/blobs"},
            "GENMESH_STORAGE_DIR",
            "afile/blobs",
            "Not a directory",
        ),
        ({"GENMESH_STORAGE_DIR": "{tmp}/afile"}, "GENMESH_STORAGE_DIR", "afile", "File exists"),
        # No storage dir: the blobs go under the data dir (here not made by the database).
        (
            {
                "GENMESH_DATA_DIR": "{tmp}/afile/data",
                "GENMESH_DATABASE_URL": "sqlite:///{tmp}/s.db",
            },
            "GENMESH_DATA_DIR",
            "afile/data/blobs",
            "Not a directory",
        ),
        # With a bucket, uploads are still spooled on local disk first.
        (
            {"GENMESH_STORAGE_DIR": "{tmp}/afile/blobs", "GENMESH_STORAGE_S3_BUCKET": "genmesh"},
            "GENMESH_STORAGE_DIR",
            "afile/blobs/tmp",
            "Not a directory",
        ),
    ],
)
def test_a_blob_directory_storage_cannot_write_is_refused_at_start(
    settings: dict[str, str], variable: str, directory: str, why: str, tmp_path: Path
) -> None:
    # Storage started, and every upload failed. A path through a file fails even for root,
    # whom permissions do not stop.
    (tmp_path / "afile").write_text("")
    lines = start(
        "services.storage",
        **{
            "GENMESH_LISTEN": "127.0.0.1:0",
            "GENMESH_DATA_DIR": str(tmp_path),
            **{name: value.format(tmp=tmp_path) for name, value in settings.items()},
        },
    )
    said = f"cannot start: {variable}: cannot write to {tmp_path / directory}: {why}"
    assert said in lines[-1], lines
