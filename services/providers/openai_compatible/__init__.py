"""OpenAI-compatible APIs (OpenAI, OpenRouter, Ollama's /v1, vLLM, LocalAI): one adapter,
as many configured instances as the catalog declares."""

from services.providers.openai_compatible.adapter import OpenAICompatibleAdapter

__all__ = ["OpenAICompatibleAdapter"]
