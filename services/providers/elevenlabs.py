"""ElevenLabs text-to-speech over its REST API.

Wire format (api.elevenlabs.io, key in the `xi-api-key` header):
  POST /v1/text-to-speech/{voice_id}[/stream]?output_format=mp3_44100_128
       {"text", "model_id", "voice_settings": {...}, "seed", "language_code"} -> audio bytes,
       with `request-id` and `history-item-id` response headers;
  GET  /v1/history/{history_item_id}/audio -> the audio of an earlier generation;
  GET  /v1/user -> the account (used as the health probe).
Errors are {"detail": {"status": ..., "message": ...}} (422: {"detail": [{"msg": ...}]}).

Speech is synthesised synchronously, so there is no remote job to poll or cancel: dropping
the connection is how a cancelled job stops ElevenLabs. The history item id is recorded as
soon as the response headers arrive, so a redelivered job fetches that audio from the
history instead of paying for the same speech twice."""

from __future__ import annotations

import io
import logging
import wave
from collections.abc import Mapping
from typing import Any

import httpx

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, JobContext, Output, Result
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.http import ProviderHTTP
from services.providers.params import BOOL, INT, NUM, STR, Param
from services.providers.probe import CachedProbe

log = logging.getLogger(__name__)

TTS = job_pb2.TASK_TEXT_TO_SPEECH
# "George", the voice ElevenLabs' own quickstart uses; every account can speak with it.
DEFAULT_VOICE = "JBFqnCBsd6RMkjVDRZzb"
# Every output_format the text-to-speech endpoint accepts (codec_samplerate[_bitrate]).
OUTPUT_FORMATS = (
    "mp3_22050_32",
    "mp3_24000_48",
    "mp3_44100_32",
    "mp3_44100_64",
    "mp3_44100_96",
    "mp3_44100_128",
    "mp3_44100_192",
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_32000",
    "pcm_44100",
    "pcm_48000",
    "wav_8000",
    "wav_16000",
    "wav_22050",
    "wav_24000",
    "wav_32000",
    "wav_44100",
    "wav_48000",
    "ulaw_8000",
    "alaw_8000",
    "opus_48000_32",
    "opus_48000_64",
    "opus_48000_96",
    "opus_48000_128",
    "opus_48000_192",
)
# codec -> (media type, file extension) of what we store.
_CODECS = {
    "mp3": ("audio/mpeg", "mp3"),
    "wav": ("audio/wav", "wav"),
    # Raw PCM plays nowhere, so it is stored inside a WAV header (samples untouched).
    "pcm": ("audio/wav", "wav"),
    "ulaw": ("audio/basic", "ulaw"),
    "alaw": ("audio/x-alaw-basic", "alaw"),
    "opus": ("audio/ogg", "opus"),
}
# Report streaming progress every this many bytes received.
_PROGRESS_STEP = 64 * 1024

PARAMS: tuple[Param, ...] = (
    Param(
        "voice_id",
        STR,
        "ElevenLabs voice id (GET /v1/voices lists an account's voices); the default is "
        "George, a premade voice every account has.",
        DEFAULT_VOICE,
    ),
    Param(
        "output_format",
        STR,
        "Audio codec, sample rate and bitrate; pcm_* is returned wrapped in a WAV header.",
        "mp3_44100_128",
        allowed=OUTPUT_FORMATS,
    ),
    Param("stability", NUM, "Voice stability (lower is more expressive).", None, 0, 1),
    Param("similarity_boost", NUM, "How closely to match the original voice.", None, 0, 1),
    Param("style", NUM, "Style exaggeration of the voice.", None, 0, 1),
    Param("speed", NUM, "Speaking speed; 1.0 is the voice's normal pace.", None, 0.7, 1.2),
    Param("use_speaker_boost", BOOL, "Boost similarity to the original speaker.", None),
    Param("seed", INT, "Best-effort deterministic sampling.", None, 0, 4294967295),
    Param(
        "language_code",
        STR,
        "ISO 639-1 language to enforce (models that support it; not multilingual v2).",
        None,
    ),
)
_VOICE_SETTINGS = ("stability", "similarity_boost", "style", "speed", "use_speaker_boost")


class ElevenLabsAdapter(ConfiguredAdapter):
    """Text-to-speech with ElevenLabs voices, streamed so progress shows bytes received."""

    family = "elevenlabs"
    option_keys = ("stream",)
    summary = "ElevenLabs text-to-speech: natural voices, mp3/wav/pcm/opus output."
    params = PARAMS
    needs_models = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._stream = config.option_flag("stream", True)
        self.http = self.own(ProviderHTTP(config, headers={"xi-api-key": config.api_key}))
        self.probe = CachedProbe(self._probe_user)
        self.handlers[TTS] = self._text_to_speech

    async def _probe_user(self) -> None:
        try:
            await self.http.json("GET", "/v1/user")
        except Fatal as exc:
            # A key scoped to text-to-speech lacks user_read, yet it authenticates fine.
            if "permission" not in exc.message:
                raise

    async def _text_to_speech(self, ctx: JobContext, params: Mapping[str, Any]) -> Result:
        output_format, voice = params["output_format"], params["voice_id"]
        # The id goes into the URL path: anything but an id could reach another endpoint.
        if not voice.isascii() or not voice.isalnum():
            raise InvalidInput(
                "invalid_parameter", f"voice_id must be letters and digits, got {voice!r}"
            )
        previous = await ctx.previous_request_id()
        if previous:
            resumed = await self._from_history(previous)
            if resumed is not None:
                return resumed
        body: dict[str, Any] = {"text": ctx.job.spec.prompt, "model_id": self.model(TTS)}
        settings = {k: params[k] for k in _VOICE_SETTINGS if params[k] is not None}
        if settings:
            body["voice_settings"] = settings
        if params["seed"] is not None:
            body["seed"] = params["seed"]
        if params["language_code"]:
            body["language_code"] = params["language_code"]
        # The streaming endpoint sends audio as it is synthesised, so progress is real.
        path = f"/v1/text-to-speech/{voice}"
        if self._stream:
            path += "/stream"
        async with self.http.stream(
            "POST", path, params={"output_format": output_format}, json=body
        ) as response:
            generation = response.headers.get("history-item-id") or response.headers.get(
                "request-id", ""
            )
            if generation:
                await ctx.record_request_id(generation)
            audio = await _read_with_progress(ctx, response)
        return Result(outputs=[_output(audio, output_format)])

    async def _from_history(self, history_item_id: str) -> Result | None:
        """The audio an earlier delivery already paid for, or None if ElevenLabs has none."""
        try:
            audio, media_type = await self.http.download(f"/v1/history/{history_item_id}/audio")
        except InvalidInput:
            # Not a history item (request ids are recorded when history is off): speak anew.
            log.info("%s: no history audio for %s; generating again", self.name, history_item_id)
            return None
        extension = next((e for m, e in _CODECS.values() if m == media_type), "mp3")
        return Result(outputs=[Output(audio, media_type, f"speech.{extension}")])


async def _read_with_progress(ctx: JobContext, response: httpx.Response) -> bytes:
    total = int(response.headers.get("content-length") or 0)
    chunks: list[bytes] = []
    received = reported = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        received += len(chunk)
        if received - reported >= _PROGRESS_STEP:
            reported = received
            percent = min(99.0, 100.0 * received / total) if total else None
            await ctx.progress(percent, f"received {received // 1024} KiB of audio")
    return b"".join(chunks)


def _output(audio: bytes, output_format: str) -> Output:
    codec, rate = output_format.split("_")[:2]
    media_type, extension = _CODECS[codec]
    if codec == "pcm":
        audio = _wav(audio, int(rate))
    return Output(audio, media_type, f"speech.{extension}")


def _wav(pcm: bytes, rate: int) -> bytes:
    """ElevenLabs PCM is 16-bit little-endian mono."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm[: len(pcm) - len(pcm) % 2])
    return buffer.getvalue()
