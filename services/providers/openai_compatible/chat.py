"""Chat completions, streamed: text-to-text, and image-to-text with the image inline."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.providers.adapter import InvalidInput, JobContext, Result, Retryable
from services.providers.openai_compatible.client import OpenAIHTTP
from services.providers.openai_compatible.options import Options
from services.providers.openai_compatible.progress import StreamedText
from services.providers.outputs import no_text
from services.providers.remote import data_uri
from services.providers.streams import iter_sse
from services.storage.probe import sniff_media_type

DEFAULT_VISION_PROMPT = "Describe this image."


def text_messages(ctx: JobContext, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*_system(params), {"role": "user", "content": ctx.job.spec.prompt}]


async def vision_messages(ctx: JobContext, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The prompt and the input image as a data: URL content part."""
    asset, data = await ctx.read_input(0)
    media_type = sniff_media_type(data[:16]) or asset.media_type or "image/png"
    url = data_uri(data, media_type)
    content = [
        {"type": "text", "text": ctx.job.spec.prompt or DEFAULT_VISION_PROMPT},
        {"type": "image_url", "image_url": {"url": url, "detail": params["detail"]}},
    ]
    return [*_system(params), {"role": "user", "content": content}]


def _system(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "system", "content": params["system"]}] if params.get("system") else []


async def complete(
    api: OpenAIHTTP,
    ctx: JobContext,
    model: str,
    messages: list[dict[str, Any]],
    params: Mapping[str, Any],
    options: Options,
) -> Result:
    """POST /chat/completions with stream=true; the text so far is reported as progress."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    for name in ("temperature", "top_p", "seed"):
        if params.get(name) is not None:
            body[name] = params[name]
    if params.get("response_format") == "json":
        body["response_format"] = {"type": "json_object"}
    if params.get("max_tokens") is not None:
        body[options.max_tokens_field] = params["max_tokens"]
    text = StreamedText(ctx, options.progress_interval)
    finish = ""
    ended = False
    async with api.stream(
        "POST", "/chat/completions", json=body, headers={"Accept": "text/event-stream"}
    ) as response:
        if response.headers.get("content-type", "").startswith("application/json"):
            # Some compatible servers ignore stream=true and answer in one piece.
            await response.aread()
            whole, finish = _whole_answer(api, response.content)
            return Result(text=_visible(api, whole, finish, params))
        async for event in iter_sse(response):
            if event.data.strip() == "[DONE]":
                ended = True
                break
            chunk = _decode(api, event.data)
            if "error" in chunk:
                raise api.stream_error(chunk["error"])
            for choice in chunk.get("choices") or []:
                if content := (choice.get("delta") or {}).get("content"):
                    text.add(content)
                finish = choice.get("finish_reason") or finish
            await text.report_if_due()
    if not (ended or finish):
        raise Retryable("stream_interrupted", f"{api.name} ended the stream before finishing")
    return Result(text=_visible(api, text.text, finish, params))


def _visible(api: OpenAIHTTP, text: str, finish: str, params: Mapping[str, Any]) -> str:
    """The answer's text; InvalidInput when it is blank for a reason of the caller's: the
    content filter, or max_tokens spent before any text (an empty answer otherwise is the
    runtime's to refuse)."""
    if text.strip():
        return text
    if finish == "content_filter":
        raise InvalidInput("content_filtered", f"{api.name} withheld the answer (content filter)")
    if finish == "length":
        raise no_text(api.name, "max_tokens", params.get("max_tokens"))
    return text


def _decode(api: OpenAIHTTP, data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise Retryable("bad_response", f"{api.name} streamed an event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise Retryable("bad_response", f"{api.name} streamed an unexpected event")
    return chunk


def _whole_answer(api: OpenAIHTTP, body: bytes) -> tuple[str, str]:
    """The text and finish_reason of an answer sent in one piece."""
    chunk = _decode(api, body.decode("utf-8", "replace"))
    if "error" in chunk:
        raise api.stream_error(chunk["error"])
    try:
        choice = chunk["choices"][0]
        return str(choice["message"]["content"] or ""), str(choice.get("finish_reason") or "")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise Retryable("bad_response", f"{api.name} answered without a message") from None
