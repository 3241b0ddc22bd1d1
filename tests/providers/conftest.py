"""A real AssetService, for the worker's storage calls."""

from tests.storage.conftest import storage  # noqa: F401  (a fixture)
