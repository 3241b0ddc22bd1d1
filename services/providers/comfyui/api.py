"""ComfyUI's HTTP API: queue a prompt, find it in the queue or history, cancel it, fetch files."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from services.providers.adapter import InvalidInput, ProviderError, Retryable
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP

_REASON_LIMIT = 800


@dataclass(frozen=True)
class PromptState:
    """Where a prompt is: "pending" (with prompts ahead), "running" or "done" (with its entry)."""

    kind: str
    ahead: int = 0
    entry: Mapping[str, Any] = field(default_factory=dict)


class ComfyHTTP(ProviderHTTP):
    """ProviderHTTP that names the failing nodes when ComfyUI rejects a workflow."""

    def status_error(self, response: httpx.Response) -> ProviderError:
        error = super().status_error(response)
        if response.status_code == 400 and isinstance(error, InvalidInput):
            reason = rejection_reason(response)
            if reason:
                return InvalidInput("workflow_rejected", self.scrub(f"{self.name}: {reason}"))
        return error


class ComfyClient:
    """The REST calls the adapter makes, each failure already classified."""

    def __init__(self, config: ProviderConfig, headers: Mapping[str, str]) -> None:
        self.http = ComfyHTTP(config, headers=headers)

    @property
    def name(self) -> str:
        return self.http.name

    async def aclose(self) -> None:
        await self.http.aclose()

    async def system_stats(self, within: float) -> Mapping[str, Any]:
        """Server facts; the cheap reachability probe. `within`: seconds allowed."""
        stats: Mapping[str, Any] = await self.http.json("GET", "/system_stats", timeout=within)
        return stats

    async def queue(self, workflow: Mapping[str, Any], client_id: str, prompt_id: str) -> str:
        """Queue `workflow`; the prompt id ComfyUI answers with (older servers pick their own)."""
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        answer = await self.http.json("POST", "/prompt", json=body)
        queued = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not isinstance(queued, str) or not queued:
            raise Retryable("bad_response", f"{self.name} queued no prompt_id: {answer!r:.200}")
        return queued

    async def history(self, prompt_id: str) -> Mapping[str, Any] | None:
        """The finished prompt's history entry, or None while it has none."""
        history = await self.http.json("GET", f"/history/{prompt_id}")
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        return entry if isinstance(entry, dict) else None

    async def state(self, prompt_id: str) -> PromptState | None:
        """Where the prompt is now; None when ComfyUI does not know it (restarted, cleared)."""
        # Queue before history: ComfyUI writes the history entry before it drops a prompt
        # from the running list, so a prompt never falls between the two lookups.
        queue = await self.http.json("GET", "/queue")
        running = _items(queue, "queue_running")
        pending = _items(queue, "queue_pending")
        if any(item[1] == prompt_id for item in running):
            return PromptState("running")
        for item in pending:
            if item[1] == prompt_id:
                ahead = len(running) + sum(1 for other in pending if _number(other) < _number(item))
                return PromptState("pending", ahead)
        entry = await self.history(prompt_id)
        return PromptState("done", entry=entry) if entry is not None else None

    async def cancel(self, prompt_id: str) -> None:
        """Drop the prompt if it still waits, and interrupt it (only it) if it runs."""
        await self.http.request("POST", "/queue", json={"delete": [prompt_id]})
        await self.http.request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def view(self, file: Mapping[str, Any]) -> tuple[bytes, str]:
        """The bytes and media type of one output file named in a history entry."""
        query = {
            "filename": str(file["filename"]),
            "subfolder": str(file.get("subfolder", "")),
            "type": str(file.get("type", "output")),
        }
        data, media_type = await self.http.download(f"/view?{urlencode(query)}")
        if media_type in ("", "application/octet-stream"):
            media_type = mimetypes.guess_type(query["filename"])[0] or media_type
        return data, media_type


def rejection_reason(response: httpx.Response) -> str:
    """ "Prompt outputs failed validation: CheckpointLoaderSimple #4: Value not in list: …"."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    parts: list[str] = []
    if isinstance(error, dict):
        parts.append(str(error.get("message") or error.get("type") or ""))
    elif error:
        parts.append(str(error))
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, node in node_errors.items():
            if not isinstance(node, dict):
                continue
            where = f"{node.get('class_type', 'node')} #{node_id}"
            for err in node.get("errors", []):
                if isinstance(err, dict):
                    text = ": ".join(str(err[k]) for k in ("message", "details") if err.get(k))
                    parts.append(f"{where}: {text}")
    if isinstance(error, dict) and error.get("details") and len(parts) == 1:
        parts.append(str(error["details"]))
    return "; ".join(p for p in parts if p)[:_REASON_LIMIT]


def _items(queue: Any, key: str) -> list[list[Any]]:
    items = queue.get(key, []) if isinstance(queue, dict) else []
    return [i for i in items if isinstance(i, list) and len(i) >= 2]


def _number(item: list[Any]) -> float:
    try:
        return float(item[0])
    except (TypeError, ValueError):
        return 0.0
