"""Prompt service settings (GENMESH_* environment variables)."""

from __future__ import annotations

from services.common.settings import ListenAddress, ServiceSettings


class Settings(ServiceSettings):
    # Where this PromptService listens.
    listen: ListenAddress = "127.0.0.1:50053"
    # Longest prompt accepted, in characters.
    prompt_max_length: int = 10_000
    # Ollama server whose model compresses long prompts (e.g. http://127.0.0.1:11434);
    # empty: the deterministic heuristic alone.
    prompt_optimizer_url: str = ""
    # The Ollama model to ask (e.g. llama3.2); empty disables the model like an empty URL.
    prompt_optimizer_model: str = ""
    # Seconds the model may take per prompt before the heuristic is used instead.
    prompt_optimizer_timeout: float = 20.0
