"""Prompt service settings (GENMESH_* environment variables)."""

from __future__ import annotations

from services.common.settings import ServiceSettings


class Settings(ServiceSettings):
    # Where this PromptService listens.
    listen: str = "127.0.0.1:50053"
    # Longest prompt accepted, in characters.
    prompt_max_length: int = 10_000
