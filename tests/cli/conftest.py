"""The running mesh the e2e tests use, for the commands that need one, and one whose router
is a process of its own, for tests that kill it."""

from __future__ import annotations

from tests.e2e.conftest import mesh, router_process_mesh  # noqa: F401  (fixtures)
