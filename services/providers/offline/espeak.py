"""Text-to-speech with espeak-ng, run as a child process on this machine.

Long text is spoken in pieces of whole sentences, one `espeak-ng --stdout` run each, so the
job reports real progress and a cancelled job stops within one piece: the running child is
killed. The pieces' samples are joined into one WAV (espeak-ng: 22,050 Hz mono 16-bit)."""

from __future__ import annotations

import io
import re
import wave
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, JobContext, Output, Result
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.offline.procs import child, find_binary
from services.providers.params import INT, STR, Param

TTS = job_pb2.TASK_TEXT_TO_SPEECH
DEFAULT_BINARY = "espeak-ng"
INSTALL_HINT = "apt-get install espeak-ng"
# Longest text one job may speak (options.max_chars): the router's default prompt limit; at
# 80 words per minute it is about 60 MiB of WAV.
DEFAULT_MAX_CHARS = 10_000
# Characters per espeak-ng run (options.piece_chars): about 1.5 minutes of speech, which
# espeak-ng renders in well under a second, so progress moves and cancelling is prompt.
DEFAULT_PIECE_CHARS = 1_000

# Language voices offered (espeak-ng's own names, as `espeak-ng --voices` lists them). The
# Debian package ships all of them; a build without one rejects it when a job asks for it.
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "fr-fr",
    "fr-be",
    "de",
    "es",
    "es-419",
    "it",
    "pt",
    "pt-br",
    "nl",
    "sv",
    "da",
    "nb",
    "fi",
    "pl",
    "cs",
    "ru",
    "uk",
    "el",
    "tr",
    "ar",
    "he",
    "hi",
    "ja",
    "ko",
    "cmn",
    "yue",
    "vi",
    "id",
    "ro",
    "hu",
)
# Voice variants (espeak-ng-data/voices/!v): m* male, f* female, the rest effects.
VARIANTS = (
    *(f"m{i}" for i in range(1, 9)),
    *(f"f{i}" for i in range(1, 6)),
    "croak",
    "whisper",
    "whisperf",
    "klatt",
    "klatt2",
    "klatt3",
)

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")


class EspeakAdapter(ConfiguredAdapter):
    """The `espeak` family: text-to-speech with the espeak-ng formant synthesizer."""

    family = "espeak"
    option_keys = ("binary", "max_chars", "piece_chars")
    summary = "Offline text-to-speech with espeak-ng: many languages, robotic but clear."
    offline = True
    params = (
        Param("voice", STR, "Language voice.", "en-us", allowed=VOICES, tasks=(TTS,)),
        Param(
            "variant",
            STR,
            "Voice variant: m1-m8 male, f1-f5 female, or an effect; unset: the voice's own.",
            None,
            allowed=VARIANTS,
            tasks=(TTS,),
        ),
        Param("speed", INT, "Speaking rate in words per minute.", 175, 80, 450, tasks=(TTS,)),
        Param("pitch", INT, "Base pitch, 0 (low) to 99 (high).", 50, 0, 99, tasks=(TTS,)),
        Param("amplitude", INT, "Volume, 0 to 200.", 100, 0, 200, tasks=(TTS,)),
        Param(
            "word_gap",
            INT,
            "Extra pause between words, in units of 10 ms.",
            0,
            0,
            100,
            tasks=(TTS,),
        ),
    )

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._binary = config.option_text("binary", DEFAULT_BINARY, filled=True)
        self._max_chars = config.option_whole("max_chars", DEFAULT_MAX_CHARS)
        self._piece_chars = max(config.option_whole("piece_chars", DEFAULT_PIECE_CHARS), 1)
        # The installed language voices, listed once per adapter.
        self._installed: frozenset[str] | None = None
        self.handlers[TTS] = self._speak

    async def check(self) -> str:
        """Usable when the espeak-ng binary is there; a cheap PATH lookup, no process."""
        if find_binary(self._binary) is None:
            where = "" if self._binary == DEFAULT_BINARY else f" ({self._binary} not found)"
            return f"espeak-ng not installed{where}: {INSTALL_HINT}"
        return ""

    async def _speak(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        text = ctx.job.spec.prompt.strip()
        if not text:
            raise InvalidInput("missing_prompt", "text-to-speech needs a non-empty prompt")
        if len(text) > self._max_chars:
            raise InvalidInput(
                "prompt_too_long",
                f"{self.name} speaks at most {self._max_chars} characters, got {len(text)}",
            )
        binary = await self._usable_binary()
        await self._check_voice(binary, p["voice"])
        voice = p["voice"] + (f"+{p['variant']}" if p["variant"] else "")
        argv = [binary, "--stdout", "-v", voice, "-s", str(p["speed"]), "-p", str(p["pitch"])]
        argv += ["-a", str(p["amplitude"]), "-g", str(p["word_gap"])]
        pieces = split_text(text, self._piece_chars)
        total = sum(len(piece) for piece in pieces)
        wavs: list[bytes] = []
        spoken = 0
        for i, piece in enumerate(pieces, 1):
            wavs.append(await self._run(argv, piece))
            spoken += len(piece)
            if len(pieces) > 1:
                await ctx.progress(100.0 * spoken / total, f"spoke part {i}/{len(pieces)}")
        return Result([Output(join_wavs(wavs), "audio/wav", "speech.wav")])

    async def _usable_binary(self) -> str:
        binary = find_binary(self._binary)
        if binary is None:
            # Not retryable: nothing changes until someone installs it.
            raise Fatal("provider_unavailable", await self.check())
        return binary

    async def _check_voice(self, binary: str, voice: str) -> None:
        if self._installed is None:
            async with child(binary, "--voices") as process:
                out, _ = await process.communicate()
            self._installed = installed_voices(out.decode(errors="replace"))
        if voice not in self._installed:
            offered = ", ".join(v for v in VOICES if v in self._installed) or "none"
            raise InvalidInput(
                "invalid_parameter",
                f"voice {voice!r} is not installed with this espeak-ng; installed: {offered}",
            )

    async def _run(self, argv: list[str], text: str) -> bytes:
        """One espeak-ng run: text on stdin (so text starting with '-' is not an option)."""
        async with child(*argv, stdin=True) as process:
            out, err = await process.communicate(text.encode())
        message = err.decode(errors="replace").strip()
        # espeak-ng exits 0 with no audio for some errors (an unknown voice): check both.
        if process.returncode != 0 or len(out) <= 44:
            raise Fatal(
                "espeak_failed",
                f"espeak-ng exited with {process.returncode}: {message or 'no audio produced'}",
            )
        return out


def installed_voices(listing: str) -> frozenset[str]:
    """Language names from `espeak-ng --voices` output (the second column)."""
    names = set()
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            names.add(fields[1])
    return frozenset(names)


def split_text(text: str, limit: int) -> list[str]:
    """Whole sentences packed into pieces of at most `limit` characters (longer sentences
    are cut between words, and a word longer than `limit` inside it)."""
    sentences = (s.strip() for s in _SENTENCE_END.split(text))
    return _pack((part for sentence in sentences for part in _cut(sentence, limit)), limit)


def _cut(sentence: str, limit: int) -> list[str]:
    if len(sentence) <= limit:
        return [sentence] if sentence else []
    return _pack(_words(sentence, limit), limit)


def _words(sentence: str, limit: int) -> Iterator[str]:
    """The sentence's words, each longer than `limit` cut into `limit`-sized pieces."""
    for word in sentence.split():
        while len(word) > limit:
            yield word[:limit]
            word = word[limit:]
        yield word


def _pack(items: Iterable[str], limit: int) -> list[str]:
    """The items in order, joined by spaces into pieces of at most `limit` characters
    (greedily; an item longer than `limit` is a piece of its own)."""
    pieces: list[str] = []
    current = ""
    for item in items:
        if current and len(current) + 1 + len(item) > limit:
            pieces.append(current)
            current = ""
        current = f"{current} {item}" if current else item
    if current:
        pieces.append(current)
    return pieces


def join_wavs(wavs: list[bytes]) -> bytes:
    """One WAV with every input's samples in order; all share espeak-ng's format.

    espeak-ng's --stdout header gives no real length (it streams); `wave` reads the samples
    that are there, and the header written here is exact."""
    out = io.BytesIO()
    with wave.open(out, "wb") as joined:
        for i, data in enumerate(wavs):
            with wave.open(io.BytesIO(data)) as piece:
                if i == 0:
                    joined.setnchannels(piece.getnchannels())
                    joined.setsampwidth(piece.getsampwidth())
                    joined.setframerate(piece.getframerate())
                joined.writeframes(piece.readframes(piece.getnframes()))
    return out.getvalue()
