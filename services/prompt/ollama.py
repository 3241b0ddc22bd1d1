"""Prompt compression by a language model served by Ollama (its native /api/chat)."""

from __future__ import annotations

from typing import Any

import httpx

from genmesh.v1 import job_pb2
from services.common.tasks import task_name

_SYSTEM = (
    "You rewrite generation prompts to be shorter. Answer with the rewritten prompt only: "
    "no preface, no quotes, no explanation. Keep the subject and every detail that changes "
    "the result; keep every style, medium, lighting and quality term word for word (for "
    "example 'watercolor', 'golden hour', 'highly detailed', '8k'). Drop politeness, "
    "repetition and filler. The rewrite must be shorter than {below} characters."
)
# A token is three to four characters of English: room for the whole answer, not for rambling.
_CHARS_PER_TOKEN = 3


class CompressorError(Exception):
    """The model gave no usable answer; the message says why, for the job's record."""


class OllamaCompressor:
    """Asks one Ollama model to compress prompts; `name` is what the job's record shows."""

    def __init__(self, base_url: str, model: str, client: httpx.AsyncClient) -> None:
        self._url = base_url.rstrip("/") + "/api/chat"
        self._model = model
        self._client = client
        self.name = f"ollama/{model}"

    async def compress(self, prompt: str, below: int, task: job_pb2.Task.ValueType) -> str:
        """The model's rewrite of `prompt`; raises CompressorError when it cannot give one."""
        purpose = f"It is a {task_name(task)} prompt.\n\n" if task else ""
        body = {
            "model": self._model,
            "messages": [
                {"role": "system", "content": _SYSTEM.format(below=below)},
                {"role": "user", "content": purpose + prompt},
            ],
            "stream": False,
            # Deterministic as the model allows; the answer may not run past the budget.
            "options": {"temperature": 0, "num_predict": max(64, below // _CHARS_PER_TOKEN)},
        }
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.TimeoutException as exc:
            raise CompressorError(f"{self.name} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise CompressorError(f"cannot reach {self.name}: {type(exc).__name__}") from exc
        answer = _json(response)
        if response.status_code != 200:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise CompressorError(f"{self.name} answered HTTP {response.status_code}: {error}")
        message = answer.get("message") if isinstance(answer, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise CompressorError(f"{self.name} answered without a message")
        return _unwrap(content)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _unwrap(text: str) -> str:
    """The rewrite without a chatty first line ("Here is the prompt:") or wrapping quotes."""
    text = text.strip()
    first, _, rest = text.partition("\n")
    if rest and first.rstrip().endswith(":"):
        text = rest.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text
