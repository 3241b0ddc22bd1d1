"""A service started with a bad setting says which, in one line each, and exits 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
    "module",
    ["services.router", "services.providers", "services.storage", "services.prompt", "gateway"],
)
def test_a_bad_log_level_or_listen_address_is_one_line_each(module: str) -> None:
    lines = start(module, GENMESH_LOG_LEVEL="verbose", GENMESH_LISTEN="nonsense")
    assert lines == [
        "cannot start: GENMESH_LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL",
        "cannot start: GENMESH_LISTEN: expected host:port, e.g. 127.0.0.1:50051 or [::]:50051 "
        "(port 0: any)",
    ]
