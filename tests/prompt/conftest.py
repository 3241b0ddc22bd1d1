"""The fake Ollama the prompt tests (and the e2e prompt tests) optimize with."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.ollama import FakeOllama
from tests.fakes.server import serving

MODEL = "llama3.2"


def first_sentence(prompt: str) -> str:
    """The fake model's rewrite: the opening sentence of the user's prompt."""
    text = prompt.split("\n\n", 1)[-1]
    return text.split(". ")[0] + "."


@pytest.fixture
async def ollama() -> AsyncIterator[tuple[FakeOllama, str]]:
    """A fake Ollama that answers with `first_sentence`, and its base URL."""
    fake = FakeOllama(reply=first_sentence, load_delay=0.05)
    async with serving(fake.app()) as url:
        yield fake, url
