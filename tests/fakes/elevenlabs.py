"""A fake ElevenLabs text-to-speech API on loopback, speaking its documented wire format.

POST /v1/text-to-speech/{voice_id}[/stream]?output_format=...  (xi-api-key header)
GET  /v1/history/{history_item_id}/audio, GET /v1/user, GET /v1/voices
Audio is real: silent MPEG audio frames for mp3_*, a sine tone for pcm_*/wav_*, G.711-style
companded samples for ulaw/alaw, and an Ogg Opus header page for opus_*. Errors use
ElevenLabs' bodies: {"detail": {"status", "message"}}, and FastAPI-style 422 lists."""

from __future__ import annotations

import asyncio
import io
import math
import struct
import uuid
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import Faults

GEORGE = "JBFqnCBsd6RMkjVDRZzb"
FORMATS = {
    *(f"mp3_{r}" for r in ("22050_32", "24000_48", "44100_32", "44100_64", "44100_96")),
    "mp3_44100_128",
    "mp3_44100_192",
    *(f"pcm_{r}" for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000)),
    *(f"wav_{r}" for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "ulaw_8000",
    "alaw_8000",
    *(f"opus_48000_{b}" for b in (32, 64, 96, 128, 192)),
}
MODELS = {
    "eleven_multilingual_v2",
    "eleven_flash_v2_5",
    "eleven_turbo_v2_5",
    "eleven_v3",
    "eleven_monolingual_v1",
}
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "ulaw": "audio/basic",
    "alaw": "audio/basic",
    "opus": "audio/ogg",
}


def _detail(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": {"status": code, "message": message}}, status)


@dataclass
class ElevenLabsFake:
    """Configurable fake: latency before audio starts, streamed chunk size and pacing."""

    api_key: str = "el-test-key"
    # Where it is served, once serving (for callers that pass the fake around).
    url: str = ""
    voices: dict[str, str] = field(default_factory=lambda: {GEORGE: "George"})
    # Seconds before the response headers (time to first byte).
    latency: float = 0.0
    chunk_size: int = 16 * 1024
    # Seconds between streamed chunks: a slow synthesis.
    chunk_delay: float = 0.0
    seconds_per_character: float = 0.06
    max_characters: int = 10_000
    # Whether responses carry history-item-id (ElevenLabs omits it with logging disabled).
    history_enabled: bool = True
    # Keys scoped to text-to-speech only: they may speak but not read the account.
    speech_only_keys: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)
    # What the fake saw: every synthesis request body, and streams the client abandoned.
    syntheses: list[dict[str, Any]] = field(default_factory=list)
    aborted_streams: int = 0
    history: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/text-to-speech/{voice_id}", self._speak, methods=["POST"]),
                Route("/v1/text-to-speech/{voice_id}/stream", self._speak, methods=["POST"]),
                Route("/v1/history/{item}/audio", self._history_audio),
                Route("/v1/user", self._user),
                Route("/v1/voices", self._voices),
            ]
        )

    async def _guard(self, request: Request) -> Response | None:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        key = request.headers.get("xi-api-key")
        if key != self.api_key and key not in self.speech_only_keys:
            return _detail(401, "invalid_api_key", "Invalid API key")
        return None

    async def _user(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        if request.headers.get("xi-api-key") in self.speech_only_keys:
            message = "The API key you used is missing the permission user_read."
            return _detail(401, "missing_permissions", message)
        return JSONResponse({"user_id": "fake-user", "subscription": {"tier": "creator"}})

    async def _voices(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        voices = [{"voice_id": v, "name": n, "category": "premade"} for v, n in self.voices.items()]
        return JSONResponse({"voices": voices})

    async def _history_audio(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        item = self.history.get(request.path_params["item"])
        if item is None:
            return _detail(404, "history_item_not_found", "History item not found")
        return Response(item[0], media_type=item[1])

    async def _speak(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        output_format = request.query_params.get("output_format", "mp3_44100_128")
        if output_format not in FORMATS:
            return JSONResponse(
                {
                    "detail": [
                        {
                            "type": "enum",
                            "loc": ["query", "output_format"],
                            "msg": f"Input should be one of {sorted(FORMATS)}",
                            "input": output_format,
                        }
                    ]
                },
                422,
            )
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            missing = {"type": "missing", "loc": ["body", "text"], "msg": "Field required"}
            return JSONResponse({"detail": [missing]}, 422)
        voice = request.path_params["voice_id"]
        if voice not in self.voices:
            message = f"A voice with the voice_id {voice} was not found."
            return _detail(404, "voice_not_found", message)
        model = body.get("model_id", "eleven_multilingual_v2")
        if model not in MODELS:
            message = (
                f"An invalid ID has been received: '{model}'. Make sure to provide a correct one."
            )
            return _detail(400, "invalid_uid", message)
        text = body["text"]
        if len(text) > self.max_characters:
            message = f"Text is {len(text)} characters; this model allows {self.max_characters}."
            return _detail(400, "max_character_limit_exceeded", message)
        self.syntheses.append(body)
        seconds = max(0.5, len(text) * self.seconds_per_character)
        audio = synthesize(output_format, seconds, seed=body.get("seed") or 0)
        media_type = CONTENT_TYPES[output_format.split("_")[0]]
        headers = {"request-id": uuid.uuid4().hex[:20], "character-cost": str(len(text))}
        if self.history_enabled:
            item = uuid.uuid4().hex[:20]
            headers["history-item-id"] = item
            self.history[item] = (audio, media_type)
        if self.latency:
            await asyncio.sleep(self.latency)
        if not request.url.path.endswith("/stream"):
            return Response(audio, media_type=media_type, headers=headers)
        return StreamingResponse(self._chunks(audio), media_type=media_type, headers=headers)

    async def _chunks(self, audio: bytes) -> Any:
        finished = False
        try:
            for start in range(0, len(audio), self.chunk_size):
                if start and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                yield audio[start : start + self.chunk_size]
            finished = True
        finally:
            # Starlette cancels the stream when the client goes away mid-synthesis.
            if not finished:
                self.aborted_streams += 1


def synthesize(output_format: str, seconds: float, seed: int = 0) -> bytes:
    """Audio in `output_format` lasting `seconds`."""
    codec, rate_text, *rest = output_format.split("_")
    rate = int(rate_text)
    if codec == "mp3":
        return silent_mp3(rate, int(rest[0]), seconds)
    if codec == "opus":
        return _ogg_opus_header(rate)
    samples = _tone(rate, seconds, 220 + seed % 440)
    if codec == "pcm":
        return samples.astype("<i2").tobytes()
    if codec == "wav":
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(samples.astype("<i2").tobytes())
        return buffer.getvalue()
    return _companded(samples, 255.0 if codec == "ulaw" else 87.6)


def _tone(rate: int, seconds: float, hertz: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * hertz * t)).astype(np.int16)


def _companded(samples: np.ndarray, mu: float) -> bytes:
    """8-bit logarithmic companding of 16-bit samples (the shape of G.711, not bit-exact)."""
    x = samples.astype(np.float64) / 32768
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    return ((y + 1) * 127.5).astype(np.uint8).tobytes()


_MPEG1_BITRATES = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_BITRATES = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MPEG1_RATES = (44100, 48000, 32000)
_MPEG2_RATES = (22050, 24000, 16000)


def silent_mp3(rate: int, kbps: int, seconds: float) -> bytes:
    """Mono Layer III frames whose side info is all zero: valid MP3 that decodes to silence."""
    mpeg1 = rate in _MPEG1_RATES
    bitrates, rates = (_MPEG1_BITRATES, _MPEG1_RATES) if mpeg1 else (_MPEG2_BITRATES, _MPEG2_RATES)
    # Sync word, version (MPEG-1: 11, MPEG-2: 10), layer III, no CRC.
    first = 0xFFFB if mpeg1 else 0xFFF3
    header = struct.pack(
        ">HBB", first, bitrates.index(kbps) << 4 | rates.index(rate) << 2, 0b11 << 6
    )
    samples_per_frame = 1152 if mpeg1 else 576
    frame_size = (144 if mpeg1 else 72) * kbps * 1000 // rate
    frames = max(1, int(seconds * rate / samples_per_frame))
    return (header + bytes(frame_size - len(header))) * frames


def parse_mp3_header(data: bytes) -> tuple[int, int]:
    """(sample rate, kbps) of the first frame; ValueError if `data` is not MPEG audio."""
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        raise ValueError("no MPEG frame sync")
    mpeg1 = bool(data[1] & 0x08)
    bitrates, rates = (_MPEG1_BITRATES, _MPEG1_RATES) if mpeg1 else (_MPEG2_BITRATES, _MPEG2_RATES)
    return rates[data[2] >> 2 & 0b11], bitrates[data[2] >> 4]


def _ogg_opus_header(rate: int) -> bytes:
    """One Ogg page carrying the OpusHead identification packet (RFC 7845)."""
    packet = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, rate, 0, 0)
    page = b"OggS" + struct.pack("<BBqIIIB", 0, 0x02, 0, 1, 0, 0, 1) + bytes([len(packet)]) + packet
    return page
