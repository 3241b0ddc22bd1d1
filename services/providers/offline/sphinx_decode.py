"""Child process of the pocketsphinx adapter: transcribe the WAV on stdin.

    python -m services.providers.offline.sphinx_decode [--hmm DIR] [--lm FILE] [--dict FILE]

Writes JSON lines to stdout: {"progress": fraction, "seconds": audio decoded} after each
utterance (a stretch of speech, at most 10 s), then {"text": transcript}. A bad input ends
with {"error": message} and exit code 2.

The decoder runs in its own process because PocketSphinx holds the GIL for a whole
`process_raw` call (seconds for a long utterance): in a thread it would freeze the worker's
event loop, and a thread could not be stopped when the job is cancelled."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from services.providers.offline.audio import SPEECH_RATE, AudioError, speech_pcm

EXIT_BAD_INPUT = 2
BYTES_PER_SECOND = 2 * SPEECH_RATE
# Longest utterance decoded at once, in seconds (see split_long).
MAX_UTTERANCE = 10.0


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def transcribe(pcm: bytes, hmm: str = "", lm: str = "", dictionary: str = "") -> str:
    """The transcript of 16 kHz mono 16-bit PCM, reporting progress per utterance."""
    # Imported here, so `--help` and bad input need no model loaded.
    from pocketsphinx import Decoder

    paths = {k: v for k, v in (("hmm", hmm), ("lm", lm), ("dict", dictionary)) if v}
    decoder = Decoder(samprate=SPEECH_RATE, loglevel="FATAL", **paths)
    total = len(pcm) / BYTES_PER_SECOND
    words: list[str] = []
    for start, speech in speech_segments(pcm):
        done = start
        for utterance in split_long(speech):
            # Each utterance is normalised on its own (full_utt), which decodes as well as
            # the whole recording at once, in bounded memory, with progress between them.
            decoder.start_utt()
            decoder.process_raw(utterance, full_utt=True)
            decoder.end_utt()
            hypothesis = decoder.hyp()
            if hypothesis is not None and hypothesis.hypstr:
                words.append(hypothesis.hypstr)
            done = min(done + len(utterance) / BYTES_PER_SECOND, total)
            emit(progress=done / total, seconds=round(done, 2))
    return " ".join(words)


def speech_segments(pcm: bytes) -> Iterator[tuple[float, bytes]]:
    """(start time, samples) of each stretch of speech, split at pauses by voice activity.

    Like pocketsphinx.Segmenter, except that the final frame always goes to end_stream:
    Segmenter drops speech running to the very end when the length is a whole number of
    frames."""
    from pocketsphinx import Endpointer

    endpointer = Endpointer(sample_rate=SPEECH_RATE)
    step = endpointer.frame_bytes
    speech: list[bytes] = []
    for start in range(0, len(pcm) - len(pcm) % 2, step):
        frame = pcm[start : start + step]
        last = start + step >= len(pcm)
        out = endpointer.end_stream(frame) if last else endpointer.process(frame)
        if out is not None:
            speech.append(out)
        if speech and (last or not endpointer.in_speech):
            yield endpointer.speech_start, b"".join(speech)
            speech = []


def split_long(speech: bytes, longest: float = MAX_UTTERANCE) -> list[bytes]:
    """`speech` cut into utterances of at most `longest` seconds, each cut at the quietest
    30 ms in the last 40 % of the stretch (between words, as a rule).

    Fluent speech without pauses would otherwise be one utterance: minutes of decoding with
    no progress, and memory growing all the while."""
    samples = np.frombuffer(speech, dtype="<i2", count=len(speech) // 2)
    frame = SPEECH_RATE * 3 // 100
    limit = int(longest * SPEECH_RATE) // frame * frame
    pieces = []
    while samples.size > limit:
        window = samples[int(0.6 * limit) : limit].astype(np.float64)
        energy = (window[: window.size // frame * frame].reshape(-1, frame) ** 2).sum(axis=1)
        cut = int(0.6 * limit) + int(np.argmin(energy)) * frame + frame // 2
        pieces.append(samples[:cut].tobytes())
        samples = samples[cut:]
    pieces.append(samples.tobytes())
    return pieces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hmm", default="", help="acoustic model directory")
    parser.add_argument("--lm", default="", help="language model file")
    parser.add_argument("--dict", default="", dest="dictionary", help="pronunciation dictionary")
    args = parser.parse_args(argv)
    try:
        pcm = speech_pcm(sys.stdin.buffer.read())
    except AudioError as exc:
        emit(error=str(exc))
        return EXIT_BAD_INPUT
    emit(text=transcribe(pcm, args.hmm, args.lm, args.dictionary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
