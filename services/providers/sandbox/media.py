"""Deterministic media for the offline sandbox provider: pure functions, no I/O."""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import random
import re
import struct
import textwrap
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import (
    Image,
    ImageDraw,
    ImageFilter,
    ImageFont,
    ImageOps,
    UnidentifiedImageError,
    features,
)

from services.providers.adapter import InvalidInput

# Speed over size: the benchmark renders ~1000 images a second on one worker.
PNG_COMPRESS_LEVEL = 1
# Inputs beyond this many pixels are refused rather than decoded into gigabytes of memory.
MAX_INPUT_PIXELS = 50_000_000

STYLES = ("sepia", "grayscale", "invert", "blur", "posterize", "pixelate", "edges")
MOTIONS = ("zoom", "pan", "hue")
VIDEO_MAX_SIDE = 512

SAMPLE_RATE = 16_000
SECONDS_PER_CHAR = 0.08
# The RIFF INFO software tag that marks a WAV as sandbox speech whose ICMT is the spoken text.
SANDBOX_SOFTWARE = "genmesh sandbox tts"


# --- images -------------------------------------------------------------------------------

# Palette layout of a rendered picture: a 224-step gradient, then shape colours, band and ink.
_GRADIENT_STEPS = 224
_SHAPE_INDEX = 224
_MAX_SHAPES = 8
_BAND_INDEX = 240
_INK_INDEX = 241


def preview_size(width: int, height: int) -> tuple[int, int]:
    """An eighth of each side, but at least 16 px (or the whole side, if smaller)."""
    return max(min(width, 16), width // 8), max(min(height, 16), height // 8)


@lru_cache(maxsize=256)
def text_to_image(prompt: str, seed: int, width: int, height: int) -> bytes:
    """A width x height PNG determined by its inputs: a gradient, shapes and the prompt."""
    return _png(_picture(prompt, seed, width, height, caption=True))


@lru_cache(maxsize=256)
def text_to_image_preview(prompt: str, seed: int, width: int, height: int) -> bytes:
    """The same picture at preview size, without the caption (unreadable that small)."""
    return _png(_picture(prompt, seed, *preview_size(width, height), caption=False))


def _picture(prompt: str, seed: int, width: int, height: int, *, caption: bool) -> Image.Image:
    # Everything comes from the hash and is relative to the size, so a preview rendered
    # small is the same picture as the full render.
    rng = _rng("image", seed, prompt)
    start, end = _colour(rng, 0.35, 0.95), _colour(rng, 0.35, 0.95)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(angle) / height)
    xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(angle) / width)
    ramp = ys[:, None] + xs[None, :]
    ramp -= ramp.min()
    ramp *= (_GRADIENT_STEPS - 1) / max(float(ramp.max()), 1e-6)
    # A palette image is a third of the bytes of RGB, which is what keeps encoding cheap.
    image = Image.frombytes("P", (width, height), ramp.astype(np.uint8).tobytes())

    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:_GRADIENT_STEPS] = np.linspace(start, end, _GRADIENT_STEPS).round()
    draw = ImageDraw.Draw(image)
    for index in range(_SHAPE_INDEX, _SHAPE_INDEX + 3 + rng.randrange(_MAX_SHAPES - 2)):
        palette[index] = _colour(rng, 0.5, 1.0)
        cx, cy = rng.random() * width, rng.random() * height
        rx, ry = rng.uniform(0.06, 0.25) * width, rng.uniform(0.06, 0.25) * height
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse(box, fill=index)
        elif kind == 1:
            draw.rectangle(box, fill=index)
        else:
            draw.polygon([(cx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)], fill=index)
    palette[_BAND_INDEX] = (np.asarray(start) * 0.25).round()
    palette[_INK_INDEX] = (255, 255, 255)
    if caption and width >= 64 and height >= 64:
        _caption(draw, prompt, width, height)
    image.putpalette(palette.tobytes())
    return image


def _caption(draw: ImageDraw.ImageDraw, prompt: str, width: int, height: int) -> None:
    size = min(max(height // 24, 10), 48)
    font = _font(size)
    pad = max(size // 2, 4)
    per_line = max(int((width - 2 * pad) / (size * 0.55)), 8)
    lines = textwrap.wrap(prompt[:400], per_line, max_lines=3, placeholder=" ...")
    if not lines:
        return
    if isinstance(font, ImageFont.ImageFont):
        # The bitmap fallback font only knows Latin-1.
        lines = [line.encode("latin-1", "replace").decode("latin-1") for line in lines]
    line_height = int(size * 1.25)
    top = height - len(lines) * line_height - 2 * pad
    draw.rectangle((0, top, width, height), fill=_BAND_INDEX)
    for i, line in enumerate(lines):
        draw.text((pad, top + pad + i * line_height), line, fill=_INK_INDEX, font=font)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if features.check("freetype2"):
        return ImageFont.load_default(size)
    return ImageFont.load_default()


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _colour(rng: random.Random, low: float, high: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(low, high), rng.uniform(low, high))
    return round(r * 255), round(g * 255), round(b * 255)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _thumbnail_png(image: Image.Image) -> bytes:
    return _png(image.resize(preview_size(*image.size), Image.Resampling.BOX))


def image_pixels(data: bytes) -> int:
    """Width x height from the header alone (0 if unreadable): what decoding will cost."""
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        return 0
    return width * height


def _open_image(data: bytes) -> Image.Image:
    """The decoded first frame of an uploaded image; InvalidInput if it is not one."""
    return _decode(data)[0]


def _decode(
    data: bytes, draft: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image and its size as uploaded (draft may decode a JPEG smaller)."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_INPUT_PIXELS:
            raise InvalidInput(
                "image_too_large",
                f"{width}x{height} image exceeds the sandbox's {MAX_INPUT_PIXELS:,} pixels",
            )
        if draft is not None:
            # JPEG can decode straight at a fraction of the size: much cheaper to analyse.
            image.draft("RGB", draft)
        image.load()
    except UnidentifiedImageError as exc:
        # Pillow's own message names the BytesIO object, which tells the caller nothing.
        raise InvalidInput(
            "invalid_image", "input is not a decodable image (not a format Pillow can read)"
        ) from exc
    except (
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
    ) as exc:
        raise InvalidInput("invalid_image", f"input is not a decodable image: {exc}") from exc
    return image, (width, height)


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white rather than dropped to black."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image.convert("RGBA"))
        return canvas.convert("RGB")
    return image.convert("RGB")


_COLOUR_NAMES = (
    "black",
    "white",
    "gray",
    "brown",
    "red",
    "orange",
    "yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "pink",
)


def image_to_text(data: bytes) -> str:
    """A description of an image: size, format, mode, dominant colours and brightness."""
    image, (width, height) = _decode(data, draft=(128, 128))
    frames = getattr(image, "n_frames", 1)
    alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    small = _rgb(image)
    small.thumbnail((64, 64))

    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 255.0
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    names = np.select(
        [
            val < 0.18,
            (sat < 0.18) & (val > 0.82),
            sat < 0.18,
            (hue >= 15) & (hue < 45) & (val < 0.6),
            (hue < 15) | (hue >= 345),
            hue < 45,
            hue < 70,
            hue < 165,
            hue < 195,
            hue < 255,
            hue < 290,
        ],
        list(range(11)),
        default=11,
    )
    counts = np.bincount(names.ravel(), minlength=len(_COLOUR_NAMES))
    shares = counts / counts.sum()
    ranked = [i for i in np.argsort(-shares, kind="stable") if shares[i] >= 0.1][:3]
    colours = [f"{_COLOUR_NAMES[i]} ({round(shares[i] * 100)}%)" for i in ranked]
    palette = f"mostly {colours[0]}"
    if len(colours) > 1:
        palette += ", with " + " and ".join(colours[1:])

    brightness = float(np.asarray(small.convert("L"), dtype=np.float32).mean()) / 255.0
    tone = "dark" if brightness < 0.35 else "bright" if brightness > 0.65 else "medium brightness"
    shape = "square" if width == height else "landscape" if width > height else "portrait"
    details = [shape, image.mode]
    if alpha:
        details.append("with transparency")
    if frames > 1:
        details.append(f"{frames} frames")
    kind = image.format or "raster"
    return (
        f"A {width}x{height} {kind} image ({', '.join(details)}): {palette}; "
        f"overall {tone} (average brightness {round(brightness * 100)}%)."
    )


def image_to_image(data: bytes, style: str, max_width: int, max_height: int) -> tuple[bytes, bytes]:
    """(PNG, preview PNG) of the image restyled, shrunk to fit max_width x max_height."""
    if style not in STYLES:
        raise InvalidInput("invalid_parameter", f"style must be one of {', '.join(STYLES)}")
    image = _rgb(_open_image(data))
    image.thumbnail((max_width, max_height))
    styled = _stylize(image, style)
    return _png(styled), _thumbnail_png(styled)


def _stylize(image: Image.Image, style: str) -> Image.Image:
    if style == "grayscale":
        return ImageOps.grayscale(image)
    if style == "sepia":
        return ImageOps.colorize(ImageOps.grayscale(image), "#2b1b0e", "#fff4dd", mid="#a8784a")
    if style == "invert":
        return ImageOps.invert(image)
    if style == "blur":
        return image.filter(ImageFilter.GaussianBlur(max(2.0, max(image.size) / 64)))
    if style == "posterize":
        return ImageOps.posterize(image, 2)
    if style == "pixelate":
        factor = max(2, max(image.size) // 48)
        width, height = image.size
        small = image.resize(
            (max(width // factor, 1), max(height // factor, 1)), Image.Resampling.BOX
        )
        return small.resize(image.size, Image.Resampling.NEAREST)
    # edges
    return ImageOps.autocontrast(ImageOps.grayscale(image).filter(ImageFilter.FIND_EDGES))


def image_to_video(
    data: bytes, motion: str, duration_seconds: float, fps: int
) -> tuple[bytes, bytes]:
    """(animated GIF, preview PNG of its first frame): the image zoomed, panned or hue-cycled."""
    if motion not in MOTIONS:
        raise InvalidInput("invalid_parameter", f"motion must be one of {', '.join(MOTIONS)}")
    if duration_seconds <= 0 or fps <= 0:
        raise InvalidInput("invalid_parameter", "duration_seconds and fps must be positive")
    image = _rgb(_open_image(data))
    image.thumbnail((VIDEO_MAX_SIDE, VIDEO_MAX_SIDE))
    count = max(2, round(duration_seconds * fps))
    frames = _hue_frames(image, count) if motion == "hue" else _moving_frames(image, motion, count)
    # GIF delays count in centiseconds: round the frames' end times, not each delay, so
    # 6 fps stays 6 fps instead of drifting to 6.25. (Identical frames fold, time holds.)
    ends = [round(100 * (i + 1) / fps) * 10 for i in range(count)]
    delays = [end - start for start, end in zip([0, *ends], ends, strict=False)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=delays, loop=0)
    return buf.getvalue(), _thumbnail_png(frames[0].convert("RGB"))


def _moving_frames(image: Image.Image, motion: str, count: int) -> list[Image.Image]:
    width, height = image.size
    frames = []
    for i in range(count):
        progress = i / (count - 1)
        if motion == "zoom":
            scale = 1.0 + 0.3 * progress
            half_w, half_h = width / (2 * scale), height / (2 * scale)
            box = (width / 2 - half_w, height / 2 - half_h, width / 2 + half_w, height / 2 + half_h)
        else:  # pan: an 80% window sliding left to right
            left = 0.2 * width * progress
            box = (left, 0.1 * height, left + 0.8 * width, 0.9 * height)
        frames.append(image.resize(image.size, Image.Resampling.BILINEAR, box=box))
    # One palette for every frame: cheaper than quantizing each, and no colour flicker.
    first = frames[0].quantize(255, method=Image.Quantize.FASTOCTREE)
    rest = [f.quantize(palette=first, dither=Image.Dither.NONE) for f in frames[1:]]
    return [first, *rest]


def _hue_frames(image: Image.Image, count: int) -> list[Image.Image]:
    # Rotating the palette's hue recolours the whole frame for the cost of 256 pixels.
    base = image.quantize(256, method=Image.Quantize.FASTOCTREE)
    colours = bytes(base.getpalette() or [])
    size = (len(colours) // 3, 1)
    hsv = np.frombuffer(Image.frombytes("RGB", size, colours).convert("HSV").tobytes(), np.uint8)
    hsv = hsv.reshape(-1, 3)
    frames = []
    for i in range(count):
        shifted = hsv.copy()
        shifted[:, 0] = (shifted[:, 0].astype(np.int32) + 256 * i // count) % 256
        rgb = Image.frombytes("HSV", size, shifted.tobytes()).convert("RGB")
        frame = base.copy()
        frame.putpalette(rgb.tobytes())
        frames.append(frame)
    return frames


# --- speech -------------------------------------------------------------------------------

_SEGMENT = round(SAMPLE_RATE * SECONDS_PER_CHAR)
# Average adult formants (Hz) per vowel (Peterson & Barney), so vowels sound like vowels.
_VOWELS: dict[str, tuple[float, float, float]] = {
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
    "y": (300, 2000, 2700),
}
_VOICED = frozenset("bdgjlmnrvwz")
_PLOSIVES = frozenset("kpqt")
_SIBILANTS = frozenset("csx")


def text_to_speech(text: str, max_duration: float) -> bytes:
    """16 kHz mono 16-bit WAV, 0.08 s per character up to max_duration, text in LIST/INFO."""
    # NUL would end the INFO string early; everything else is kept so STT gives it back exactly.
    text = text.replace("\x00", "")
    spoken = text[: max(int(max_duration / SECONDS_PER_CHAR + 1e-9), 0)]
    return _speech(spoken)


@lru_cache(maxsize=32)
def _speech(spoken: str) -> bytes:
    pitches = [0] * len(spoken)
    for word in re.finditer(r"[^\W_]+", spoken):
        length = word.end() - word.start()
        for j in range(length):
            # A rise and fall over each word, drifting down over the sentence, like speech.
            rise = 22 * math.sin(math.pi * (j + 0.5) / length)
            drift = 12 * (word.start() + j) / len(spoken)
            pitches[word.start() + j] = round(118 + rise - drift)
    segments = [_segment(char, pitch) for char, pitch in zip(spoken, pitches, strict=True)]
    samples = np.concatenate(segments) if segments else np.zeros(0, dtype=np.float32)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > 0:
        samples = samples * (0.7 * 32767 / peak)
    pcm = samples.astype("<i2").tobytes()
    info = _chunk(b"ISFT", _zstr(SANDBOX_SOFTWARE)) + _chunk(b"ICMT", _zstr(spoken))
    fmt = struct.pack("<HHIIHH", 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    # LIST goes after data: naive readers that assume a 44-byte header still play it.
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"data", pcm) + _chunk(b"LIST", b"INFO" + info)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@lru_cache(maxsize=2048)
def _segment(char: str, pitch: int) -> np.ndarray:
    lower = char.lower()
    pitch = pitch or 118  # only word characters get a pitch; the rest are silent anyway
    t = np.arange(_SEGMENT, dtype=np.float64) / SAMPLE_RATE
    noise = np.random.default_rng(ord(lower)).standard_normal(_SEGMENT)
    if lower in _VOWELS:
        wave = _voiced(_VOWELS[lower], pitch, t)
    elif lower in _VOICED:
        second = 900 + 60 * (ord(lower) % 20)
        wave = 0.5 * _voiced((250, second, 2500), pitch, t) + 0.03 * noise
    elif lower in _PLOSIVES:
        wave = 0.35 * noise * np.exp(-t / 0.012)
    elif lower in _SIBILANTS:
        wave = 0.2 * np.diff(noise, prepend=0.0)
    elif lower.isalpha() and lower.isascii():  # f, h
        wave = 0.15 * noise
    elif char.isalnum():
        # Digits and other scripts: some vowel, chosen stably by the character.
        vowels = list(_VOWELS.values())
        wave = _voiced(vowels[ord(lower) % len(vowels)], pitch, t)
    else:
        wave = np.zeros(_SEGMENT)
    segment = (wave * _ENVELOPE).astype(np.float32)
    segment.flags.writeable = False  # shared through the cache
    return segment


def _voiced(formants: tuple[float, ...], pitch: int, t: np.ndarray) -> np.ndarray:
    freqs = np.arange(1, 4000 // pitch + 1) * float(pitch)
    amps = sum(
        gain / (1 + ((freqs - formant) / 90.0) ** 2)
        for formant, gain in zip(formants, (1.0, 0.5, 0.25), strict=False)
    )
    wave = np.asarray(amps) @ np.sin(2 * np.pi * np.outer(freqs, t))
    return wave / max(float(np.abs(wave).max()), 1e-9)


def _envelope() -> np.ndarray:
    # Raised-cosine edges so consecutive characters neither click nor blur together.
    env = np.ones(_SEGMENT)
    attack, release = round(0.008 * SAMPLE_RATE), round(0.012 * SAMPLE_RATE)
    env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, attack))
    env[-release:] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, release))
    return env


_ENVELOPE = _envelope()


def _zstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def _chunk(chunk_id: bytes, data: bytes) -> bytes:
    pad = b"\x00" if len(data) % 2 else b""
    return chunk_id + struct.pack("<I", len(data)) + data + pad


@dataclass(frozen=True)
class _Wav:
    channels: int
    sample_rate: int
    byte_rate: int
    data_size: int
    info: dict[bytes, bytes]


def _read_wav(data: bytes) -> _Wav:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidInput("invalid_audio", "the sandbox transcribes WAV (RIFF/WAVE) audio only")
    fmt: bytes | None = None
    data_size: int | None = None
    info: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt " and fmt is None:
            fmt = body
        elif chunk_id == b"data" and data_size is None:
            # A truncated upload holds fewer bytes than declared: report what is there.
            data_size = len(body)
        elif chunk_id == b"LIST" and body[:4] == b"INFO":
            info.update(_info_entries(body[4:]))
        pos += 8 + size + size % 2
    if fmt is None or len(fmt) < 16 or data_size is None:
        raise InvalidInput("invalid_audio", "WAV file lacks a valid fmt or data chunk")
    _, channels, rate, byte_rate = struct.unpack_from("<HHII", fmt)
    if channels == 0 or rate == 0 or byte_rate == 0:
        raise InvalidInput("invalid_audio", "WAV fmt chunk declares no channels or no rate")
    return _Wav(channels, rate, byte_rate, data_size, info)


def _info_entries(body: bytes) -> dict[bytes, bytes]:
    entries = {}
    pos = 0
    while pos + 8 <= len(body):
        key, size = body[pos : pos + 4], struct.unpack_from("<I", body, pos + 4)[0]
        entries[key] = body[pos + 8 : pos + 8 + size].rstrip(b"\x00")
        pos += 8 + size + size % 2
    return entries


def speech_to_text(data: bytes) -> str:
    """The text of sandbox speech; for any other WAV, an honest note of what was heard."""
    wav = _read_wav(data)
    if wav.info.get(b"ISFT") == SANDBOX_SOFTWARE.encode() and b"ICMT" in wav.info:
        return wav.info[b"ICMT"].decode("utf-8", "replace")
    seconds = wav.data_size / wav.byte_rate
    plural = "" if wav.channels == 1 else "s"
    return (
        f"[{seconds:.2f} s of audio, {wav.sample_rate} Hz, {wav.channels} channel{plural}, "
        "no speech model in the sandbox]"
    )


# --- text ---------------------------------------------------------------------------------

_STOPWORD_TEXT = (
    "about after also and are but can for from has have her his how into its not our "
    "she that the their them then there these they this was were what when which who "
    "will with would you your"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def text_to_text(prompt: str) -> str:
    """A deterministic echo-style reply: word and character counts, key words, the prompt."""
    words = _words(prompt)
    keywords = _keywords(words, 5)
    excerpt = _excerpt(prompt, 240)
    plural = "" if len(words) == 1 else "s"
    lines = [
        f"Sandbox reply (offline, no language model): your prompt has {len(words)} "
        f"word{plural} and {len(prompt)} characters."
    ]
    if keywords:
        lines.append(f"Key words: {', '.join(keywords)}.")
    lines.append(f'You wrote: "{excerpt}"')
    return "\n".join(lines)


def text_to_json(prompt: str) -> str:
    """A deterministic JSON object (title, description, keywords, categories) from the prompt.

    The prompt's last paragraph is taken as the subject: instructions usually come first."""
    paragraphs = [p for p in re.split(r"\n\s*\n", prompt) if p.strip()] or [prompt]
    subject = paragraphs[-1]
    keywords = _keywords(_words(subject), 8)
    title = " ".join(w.capitalize() for w in keywords[:4]) or "Untitled"
    answer = {
        "title": title,
        "description": f"Sandbox copy (offline, no language model): {_excerpt(subject, 300)}",
        "keywords": keywords,
        "categories": [w.capitalize() for w in keywords[:2]] or ["General"],
    }
    return json.dumps(answer, ensure_ascii=False)


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+(?:['\u2019][^\W_]+)*", text)


def _keywords(words: list[str], count: int) -> list[str]:
    counts = Counter(w.lower() for w in words if len(w) > 2 and w.lower() not in _STOPWORDS)
    # most_common breaks ties by first appearance, so the answer is stable.
    return [word for word, _ in counts.most_common(count)]


def _excerpt(text: str, limit: int) -> str:
    excerpt = " ".join(text.split())
    return excerpt if len(excerpt) <= limit else excerpt[: limit - 3] + "..."
