"""Fixtures shared by the router's tests: the store, selector, fallback and dispatcher on a
real database and JetStream (defined beside the fallback tests that introduced it)."""

from tests.router.test_fallback import world

__all__ = ["world"]
