"""Audio: speech (text-to-speech) and transcriptions (speech-to-text)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.providers.adapter import InvalidInput, JobContext, Output, Result, Retryable
from services.providers.openai_compatible.client import OpenAIHTTP
from services.storage.probe import sniff_media_type

# What each response_format is, when the server does not say.
AUDIO_MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_UPLOAD_EXTENSIONS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "audio/webm": "webm",
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "video/mp4": "mp4",
}


async def speak(api: OpenAIHTTP, ctx: JobContext, model: str, params: Mapping[str, Any]) -> Result:
    """POST /audio/speech; the answer body is the audio itself."""
    fmt = params["response_format"]
    body: dict[str, Any] = {
        "model": model,
        "input": ctx.job.spec.prompt,
        "voice": params["voice"],
        "response_format": fmt,
        "speed": params["speed"],
    }
    if params.get("instructions"):
        body["instructions"] = params["instructions"]
    response = await api.request("POST", "/audio/speech", json=body)
    data = response.content
    if not data:
        raise Retryable("bad_response", f"{api.name} answered with no audio")
    said = response.headers.get("content-type", "").split(";")[0].strip()
    media_type = said if said.startswith("audio/") else AUDIO_MEDIA_TYPES[fmt]
    return Result(outputs=[Output(data, media_type, f"speech.{fmt}")])


async def transcribe(
    api: OpenAIHTTP, ctx: JobContext, model: str, params: Mapping[str, Any]
) -> Result:
    """POST /audio/transcriptions (multipart); the job's prompt, if any, guides the model."""
    asset, data = await ctx.read_input(0)
    media_type = sniff_media_type(data[:16]) or asset.media_type or "application/octet-stream"
    extension = _UPLOAD_EXTENSIONS.get(media_type.split(";")[0])
    if extension is None:
        raise InvalidInput(
            "unsupported_media",
            f"{api.name} transcribes flac, mp3, mp4, m4a, ogg, wav or webm, not {media_type}",
        )
    form = {"model": model, "response_format": "json"}
    if ctx.job.spec.prompt:
        form["prompt"] = ctx.job.spec.prompt
    if params.get("language"):
        form["language"] = params["language"]
    files = {"file": (f"audio.{extension}", data, media_type)}
    body = await api.json("POST", "/audio/transcriptions", data=form, files=files)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise Retryable("bad_response", f"{api.name} answered without a transcript")
    return Result(text=text)
