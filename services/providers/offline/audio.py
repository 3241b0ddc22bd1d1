"""PCM WAV in, 16 kHz mono 16-bit samples out: what PocketSphinx's acoustic model expects."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SPEECH_RATE = 16_000


class AudioError(ValueError):
    """The bytes are not a WAV file this module can read."""


@dataclass(frozen=True)
class WavInfo:
    channels: int
    sample_width: int
    rate: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def wav_info(data: bytes) -> WavInfo:
    """The format and length of a PCM WAV, from its header (no samples are decoded)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.getnframes()
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a PCM WAV file ({exc})") from exc
    if channels < 1 or rate < 1000 or width not in (1, 2, 3, 4):
        raise AudioError(f"unsupported WAV format: {channels} channels, {rate} Hz, {8 * width}-bit")
    # A streamed WAV's header claims ~2 GiB; the bytes present bound the real length.
    return WavInfo(channels, width, rate, min(frames, len(data) // (channels * width)))


def speech_pcm(data: bytes) -> bytes:
    """The WAV's samples as 16 kHz mono signed 16-bit little-endian PCM."""
    info = wav_info(data)
    with wave.open(io.BytesIO(data)) as w:
        raw = w.readframes(info.frames)
    samples = decode_samples(raw, info.sample_width, info.channels).mean(axis=1)
    resampled = resample(samples, info.rate, SPEECH_RATE)
    return np.clip(np.round(resampled * 32768.0), -32768, 32767).astype("<i2").tobytes()


def decode_samples(raw: bytes, width: int, channels: int) -> npt.NDArray[np.float64]:
    """Interleaved PCM as floats in [-1, 1), shaped (frames, channels)."""
    usable = len(raw) - len(raw) % (width * channels)
    buf = np.frombuffer(raw, dtype=np.uint8, count=usable)
    if width == 1:  # 8-bit WAV is unsigned
        values = (buf.astype(np.float64) - 128.0) / 128.0
    elif width == 3:
        b = buf.reshape(-1, 3).astype(np.int32)
        packed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        # Sign-extend the 24-bit value held in the low bits.
        values = ((packed << 8) >> 8).astype(np.float64) / float(1 << 23)
    else:
        dtype = "<i2" if width == 2 else "<i4"
        values = np.frombuffer(buf, dtype=dtype).astype(np.float64) / float(1 << (8 * width - 1))
    return values.reshape(-1, channels)


def resample(samples: npt.NDArray[np.float64], rate: int, target: int) -> npt.NDArray[np.float64]:
    """`samples` at `target` Hz: low-pass below the new Nyquist when shrinking, then
    interpolate."""
    if rate == target or samples.size == 0:
        return samples
    if target < rate:
        samples = np.convolve(samples, _lowpass(0.45 * target / rate, rate / target), "same")
    count = round(samples.size * target / rate)
    positions = np.arange(count) * (rate / target)
    return np.interp(positions, np.arange(samples.size), samples)


def _lowpass(cutoff: float, ratio: float) -> npt.NDArray[np.float64]:
    """A Blackman-windowed sinc FIR; `cutoff` in cycles per input sample."""
    half = int(np.ceil(8 * ratio))
    n = np.arange(-half, half + 1)
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(n.size)
    return taps / taps.sum()
