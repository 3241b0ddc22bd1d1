"""The offline sandbox provider: real, valid outputs for every task, with test controls."""

from services.providers.sandbox.adapter import SandboxAdapter

__all__ = ["SandboxAdapter"]
