"""The running mesh the e2e tests use, for the commands that need one."""

from tests.e2e.conftest import mesh  # noqa: F401  (a fixture)
