"""The sandbox's pure media functions: valid files, deterministic, honest about their input."""

from __future__ import annotations

import io
import struct
import time
import wave
import zlib

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageChops

from services.providers.adapter import InvalidInput
from services.providers.sandbox import media


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def plain_wav(seconds: float, rate: int = 16_000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * channels * round(seconds * rate))
    return buf.getvalue()


@pytest.fixture
def photo() -> bytes:
    """A busy 200x120 picture, so every transform visibly changes it."""
    return media.text_to_image("a harbour at dusk", 7, 200, 120)


# --- text-to-image ------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(512, 512), (320, 200), (16, 16), (17, 2048)])
def test_text_to_image_is_a_png_of_the_exact_size(width: int, height: int) -> None:
    image = open_image(media.text_to_image("a red fox in snow", 1, width, height))
    assert image.format == "PNG"
    assert image.size == (width, height)


def test_text_to_image_is_deterministic_and_depends_on_prompt_and_seed() -> None:
    first = media.text_to_image("a red fox", 3, 128, 96)
    media.text_to_image.cache_clear()  # a fresh render, not the memoized bytes
    assert media.text_to_image("a red fox", 3, 128, 96) == first
    assert media.text_to_image("a red fox", 4, 128, 96) != first
    assert media.text_to_image("a blue fox", 3, 128, 96) != first
    pixels = np.asarray(open_image(first).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # a picture, not a flat fill


def test_preview_is_the_same_picture_small() -> None:
    full = open_image(media.text_to_image("lighthouse", 9, 512, 384)).convert("RGB")
    preview = open_image(media.text_to_image_preview("lighthouse", 9, 512, 384))
    assert preview.format == "PNG" and preview.size == (64, 48)
    # Compare away from the caption band: the same colours in the same places.
    shrunk = np.asarray(full.resize((64, 48), Image.Resampling.BOX), dtype=np.int16)[:30]
    small = np.asarray(preview.convert("RGB"), dtype=np.int16)[:30]
    assert np.abs(shrunk - small).mean() < 20
    other = np.asarray(
        open_image(media.text_to_image_preview("lighthouse", 10, 512, 384)).convert("RGB"),
        dtype=np.int16,
    )[:30]
    assert np.abs(other - small).mean() > np.abs(shrunk - small).mean()


@pytest.mark.parametrize(
    ("size", "expected"), [((512, 512), (64, 64)), ((100, 40), (16, 16)), ((8, 2048), (8, 256))]
)
def test_preview_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert media.preview_size(*size) == expected


def test_rendering_is_cheap() -> None:
    start = time.perf_counter()
    for i in range(20):
        media.text_to_image(f"benchmark prompt {i}", i, 512, 512)
    # A few ms each; the bound is loose so a busy CI machine does not flake.
    assert (time.perf_counter() - start) / 20 < 0.05


def test_caption_survives_any_script() -> None:
    image = open_image(media.text_to_image("東京の夜景 🌃 " * 30, 0, 256, 256))
    assert image.size == (256, 256)


# --- speech -------------------------------------------------------------------------------


def test_speech_is_a_16khz_mono_pcm_wav_paced_by_the_text() -> None:
    text = "Hello from the sandbox."
    data = media.text_to_speech(text, 60)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16_000)
        seconds = w.getnframes() / w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert seconds == pytest.approx(len(text) * media.SECONDS_PER_CHAR, abs=0.01)
    assert np.abs(samples).max() > 10_000  # audible, not silence
    # Pauses between words: the space's stretch is silent.
    space = text.index(" ")
    seg = round(16_000 * media.SECONDS_PER_CHAR)
    assert not samples[space * seg : (space + 1) * seg].any()


def test_speech_duration_scales_and_is_capped() -> None:
    def seconds(text: str, cap: float = 60) -> float:
        with wave.open(io.BytesIO(media.text_to_speech(text, cap))) as w:
            return w.getnframes() / w.getframerate()

    assert seconds("one two three four five six") > 2 * seconds("one two")
    assert seconds("x" * 500, cap=4) == pytest.approx(4, abs=0.01)


def test_speech_is_deterministic() -> None:
    assert media.text_to_speech("same words", 60) == media.text_to_speech("same words", 60)
    assert media.text_to_speech("same words", 60) != media.text_to_speech("other words", 60)


@pytest.mark.parametrize(
    "text",
    ["hello from the sandbox", "Héllo, wörld! 42 ünïcödé…", "odd", "line\nbreaks  and  gaps"],
)
def test_transcribing_sandbox_speech_returns_the_exact_text(text: str) -> None:
    assert media.speech_to_text(media.text_to_speech(text, 60)) == text


def test_capped_speech_transcribes_to_what_was_spoken() -> None:
    text = "abcdefghij" * 10
    assert media.speech_to_text(media.text_to_speech(text, 2)) == text[:25]


@pytest.mark.parametrize(
    ("wav", "expected"),
    [
        (plain_wav(2.4), "[2.40 s of audio, 16000 Hz, 1 channel, no speech model in the sandbox]"),
        (plain_wav(0.5, 44_100, 2), "[0.50 s of audio, 44100 Hz, 2 channels, no speech model"),
    ],
)
def test_other_wavs_are_described_truthfully(wav: bytes, expected: str) -> None:
    assert media.speech_to_text(wav).startswith(expected)


def test_info_chunk_without_the_sandbox_marker_is_not_trusted() -> None:
    wav = plain_wav(1.0)
    info = b"INFO" + b"ICMT" + struct.pack("<I", 6) + b"hello\x00"
    body = wav[12:] + b"LIST" + struct.pack("<I", len(info)) + info
    forged = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
    assert media.speech_to_text(forged).startswith("[1.00 s of audio")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not audio at all",
        b"ID3\x04\x00" + b"\x00" * 100,  # an MP3
        b"RIFF\x04\x00\x00\x00WAVE",  # no chunks
        plain_wav(1.0)[:36],  # fmt but no data chunk
    ],
)
def test_non_wav_input_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidInput) as err:
        media.speech_to_text(data)
    assert err.value.code == "invalid_audio"


# --- text ---------------------------------------------------------------------------------


def test_text_reply_is_deterministic_and_about_the_prompt() -> None:
    prompt = "Write a haiku about foxes, snow and foxes at night"
    reply = media.text_to_text(prompt)
    assert reply == media.text_to_text(prompt)
    assert "10 words" in reply and f"{len(prompt)} characters" in reply
    assert "Key words: foxes, write, haiku" in reply
    assert prompt in reply
    assert media.text_to_text("another prompt") != reply


# --- image-to-text ------------------------------------------------------------------------


def test_image_description_names_size_colour_and_brightness() -> None:
    red = encode(Image.new("RGB", (640, 480), (220, 20, 30)))
    text = media.image_to_text(red)
    assert "640x480" in text and "PNG" in text and "landscape" in text
    assert "red (100%)" in text

    dark = encode(Image.new("L", (30, 90), 10), "JPEG")
    text = media.image_to_text(dark)
    assert "30x90" in text and "JPEG" in text and "portrait" in text
    assert "black" in text and "dark" in text


def test_image_description_reports_transparency_and_mix() -> None:
    image = Image.new("RGBA", (100, 100), (0, 0, 255, 255))
    image.paste((255, 255, 255, 0), (0, 0, 50, 100))
    text = media.image_to_text(encode(image))
    assert "with transparency" in text
    assert "blue (50%)" in text and "white (50%)" in text


def test_large_jpeg_is_described_at_its_uploaded_size() -> None:
    jpeg = encode(Image.new("RGB", (1600, 1200), (30, 160, 40)), "JPEG")
    assert media.image_to_text(jpeg).startswith("A 1600x1200 JPEG image")


@pytest.mark.parametrize("data", [b"", b"plain text", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_non_image_input_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidInput) as err:
        media.image_to_text(data)
    assert err.value.code == "invalid_image"
    # Said in the caller's terms, not as Pillow's repr of an in-memory file.
    assert "BytesIO" not in err.value.message and "0x" not in err.value.message


def test_image_pixels_reads_only_the_header(photo: bytes) -> None:
    assert media.image_pixels(photo) == 200 * 120
    assert media.image_pixels(b"not an image") == 0


def test_oversized_images_are_refused_before_decoding() -> None:
    png = bytearray(encode(Image.new("L", (1, 1))))
    # Claim 8000x7000 in IHDR (with a valid CRC): over the sandbox's limit, under Pillow's.
    ihdr = b"IHDR" + struct.pack(">II", 8000, 7000) + bytes(png[24:29])
    png[12:33] = ihdr + struct.pack(">I", zlib.crc32(ihdr))
    with pytest.raises(InvalidInput) as err:
        media.image_to_text(bytes(png))
    assert err.value.code == "image_too_large"


# --- image-to-image -----------------------------------------------------------------------


@pytest.mark.parametrize("style", media.STYLES)
def test_every_style_changes_the_image(photo: bytes, style: str) -> None:
    png, preview = media.image_to_image(photo, style, 512, 512)
    out, original = open_image(png), open_image(photo).convert("RGB")
    assert out.format == "PNG" and out.size == original.size
    assert ImageChops.difference(out.convert("RGB"), original).getbbox() is not None
    assert open_image(preview).size == media.preview_size(*original.size)


def test_image_to_image_fits_the_box_keeping_aspect(photo: bytes) -> None:
    png, _ = media.image_to_image(photo, "invert", 100, 100)
    assert open_image(png).size == (100, 60)
    png, _ = media.image_to_image(photo, "invert", 1024, 1024)
    assert open_image(png).size == (200, 120)  # never enlarged


def test_transparent_input_is_flattened_onto_white() -> None:
    clear = encode(Image.new("RGBA", (40, 40), (0, 0, 0, 0)))
    png, _ = media.image_to_image(clear, "grayscale", 512, 512)
    assert open_image(png).getextrema() == (255, 255)


def test_image_to_image_rejects_bad_input(photo: bytes) -> None:
    with pytest.raises(InvalidInput):
        media.image_to_image(b"nope", "sepia", 512, 512)
    with pytest.raises(InvalidInput):
        media.image_to_image(photo, "cubism", 512, 512)


# --- image-to-video -----------------------------------------------------------------------


@pytest.mark.parametrize("motion", media.MOTIONS)
def test_video_is_an_animated_gif(photo: bytes, motion: str) -> None:
    gif, preview = media.image_to_video(photo, motion, 1.5, 6)
    video = Image.open(io.BytesIO(gif))
    assert isinstance(video, GifImagePlugin.GifImageFile)
    assert video.size == (200, 120)
    assert video.is_animated and video.n_frames == 9
    total = 0
    for i in range(video.n_frames):
        video.seek(i)
        total += video.info["duration"]
    assert total == 1500
    assert open_image(preview).format == "PNG"


def test_video_size_is_capped() -> None:
    big = encode(Image.linear_gradient("L").resize((1024, 768)))
    gif, _ = media.image_to_video(big, "pan", 0.5, 4)
    video = Image.open(io.BytesIO(gif))
    assert isinstance(video, GifImagePlugin.GifImageFile)
    assert video.size == (media.VIDEO_MAX_SIDE, 384)
    assert video.n_frames == 2


def test_video_rejects_bad_input() -> None:
    with pytest.raises(InvalidInput):
        media.image_to_video(b"\x00" * 10, "zoom", 1, 4)
