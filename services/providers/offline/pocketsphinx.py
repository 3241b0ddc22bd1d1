"""Speech-to-text with CMU PocketSphinx (the PyPI `pocketsphinx` package, which ships a US
English model), offline.

Decoding runs in a child process (sphinx_decode.py says why) that reports progress per
stretch of speech; a cancelled job kills it. Catalog options: `hmm`, `lm`, `dict` point at
another acoustic model, language model and dictionary (another language, a narrower
vocabulary); `max_seconds` bounds the audio one job may send."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genmesh.v1 import job_pb2
from services.common.cancelling import cancel_task
from services.providers.adapter import Fatal, InvalidInput, JobContext, Result
from services.providers.base import ConfiguredAdapter
from services.providers.config import ProviderConfig
from services.providers.offline.audio import AudioError, wav_info
from services.providers.offline.procs import child

STT = job_pb2.TASK_SPEECH_TO_TEXT
INSTALL_HINT = "pip install pocketsphinx"
DECODER = "services.providers.offline.sphinx_decode"
DEFAULT_MAX_SECONDS = 600.0
_MODEL_FILES = (("hmm", "acoustic model"), ("lm", "language model"), ("dict", "dictionary"))


class PocketSphinxAdapter(ConfiguredAdapter):
    """The `pocketsphinx` family: transcribes an uploaded PCM WAV (any rate, any channels)."""

    family = "pocketsphinx"
    option_keys = (*(key for key, _ in _MODEL_FILES), "max_seconds")
    summary = "Offline speech-to-text with CMU PocketSphinx (US English); reads PCM WAV."
    offline = True

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        paths = {key: config.option_text(key) for key, _ in _MODEL_FILES}
        self._models = {key: path for key, path in paths.items() if path}
        self._max_seconds = config.option_number("max_seconds", DEFAULT_MAX_SECONDS)
        self.handlers[STT] = self._transcribe

    async def check(self) -> str:
        """Usable when the package is importable and any configured model files exist."""
        return self._unavailable()

    def _unavailable(self) -> str:
        # A stat per configured file: cheap enough for the event loop, every announce.
        if importlib.util.find_spec("pocketsphinx") is None:
            return f"pocketsphinx not installed: {INSTALL_HINT}"
        for key, what in _MODEL_FILES:
            path = self._models.get(key)
            if path and not Path(path).exists():
                return f"pocketsphinx {what} not found: {path}"
        return ""

    async def _transcribe(self, ctx: JobContext, p: Mapping[str, Any]) -> Result:
        reason = await self.check()
        if reason:
            # Not retryable: nothing changes until someone installs it.
            raise Fatal("provider_unavailable", reason)
        if not ctx.job.spec.input_asset_ids:
            raise InvalidInput("missing_input", "speech-to-text needs one input audio asset")
        _, data = await ctx.read_input(0)
        try:
            info = wav_info(data)
        except AudioError as exc:
            raise InvalidInput("invalid_audio", f"{self.name} reads PCM WAV audio: {exc}") from exc
        if info.seconds > self._max_seconds:
            raise InvalidInput(
                "audio_too_long",
                f"{self.name} transcribes at most {self._max_seconds:g} s, "
                f"got {info.seconds:.1f} s",
            )
        await ctx.progress(0.0, f"decoding {info.seconds:.1f} s of audio")
        return Result(text=await self._decode(ctx, data, info.seconds))

    async def _decode(self, ctx: JobContext, data: bytes, seconds: float) -> str:
        argv = [sys.executable, "-m", DECODER]
        for key, path in self._models.items():
            argv += [f"--{key}", path]
        text: str | None = None
        error = ""
        async with child(*argv, stdin=True) as process:
            assert process.stdin and process.stdout and process.stderr
            feeder = asyncio.create_task(_feed(process.stdin, data))
            try:
                async for line in process.stdout:
                    message = json.loads(line)
                    if "progress" in message:
                        await ctx.progress(
                            100.0 * message["progress"],
                            f"decoded {message['seconds']:.1f} of {seconds:.1f} s",
                        )
                    elif "text" in message:
                        text = message["text"]
                    elif "error" in message:
                        error = message["error"]
            finally:
                await cancel_task(feeder)
            err = await process.stderr.read()
            await process.wait()
        if error:
            raise InvalidInput("invalid_audio", f"{self.name} reads PCM WAV audio: {error}")
        if process.returncode != 0 or text is None:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise Fatal(
                "pocketsphinx_failed",
                f"the decoder exited with {process.returncode}: {' '.join(tail) or 'no output'}",
            )
        return text


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write the WAV to the decoder; it reads everything before it starts."""
    # A decoder that died early closes the pipe: its exit code tells the story, not this.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()
