"""Media type parsing and sniffing, and measuring files that `wave` cannot read."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from services.common.errors import InvalidArgument
from services.storage.probe import (
    MediaInfo,
    normalize_media_type,
    png_size,
    probe_file,
    sniff_media_type,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", ""),
        ("image/PNG", "image/png"),
        (" text/plain ;Charset=utf-8", "text/plain; charset=utf-8"),
        ('multipart/mixed; boundary="a b"', 'multipart/mixed; boundary="a b"'),
        ("application/vnd.api+json", "application/vnd.api+json"),
    ],
)
def test_normalize_media_type(given: str, expected: str) -> None:
    assert normalize_media_type(given) == expected


@pytest.mark.parametrize(
    "given", ["png", "image/", "/png", "image/png/x", "image /png", "a/b;", "a/b; c", "a/b; c=d e"]
)
def test_malformed_media_type(given: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize_media_type(given)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n....", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"GIF89a", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"hello", None),
    ],
)
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff_media_type(head) == expected


def test_float_wav_duration_without_wave_module(tmp_path: Path) -> None:
    # IEEE float (format 3), which `wave` refuses: 8000 Hz mono float32, 0.25 s.
    rate, frames = 8000, 2000
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    data = b"\x00" * (frames * 4)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path = tmp_path / "f.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    info = probe_file(path, "")
    assert info.media_type == "audio/wav"
    assert info.duration_seconds == pytest.approx(0.25)


def _png(mode: str, size: tuple[int, int], **save: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG", **save)
    return out.getvalue()


def _pillow_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("RGB", (64, 64)),
        ("RGBA", (3, 700)),
        ("L", (1, 1)),
        ("1", (9, 5)),
        ("P", (300, 2)),
        ("I;16", (17, 33)),
        ("LA", (8, 8)),
    ],
)
def test_png_header_reads_what_pillow_reads(mode: str, size: tuple[int, int]) -> None:
    data = _png(mode, size)
    assert png_size(data) == _pillow_size(data) == size
    assert probe_file(data, "image/png") == MediaInfo("image/png", *size)


def test_png_that_is_not_sound_is_left_to_pillow() -> None:
    data = _png("RGB", (10, 20))
    ihdr_crc = 8 + 8 + 13  # signature, IHDR's length and type, its body
    damaged = data[:ihdr_crc] + bytes([data[ihdr_crc] ^ 1]) + data[ihdr_crc + 1 :]
    assert png_size(damaged) is None
    assert png_size(data[:40]) is None  # cut short before any image data
    assert png_size(b"GIF89a" + data[6:]) is None
    # Pillow refuses the damaged header too, so the image is stored unmeasured.
    assert probe_file(damaged, "image/png") == MediaInfo("image/png")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + zlib.crc32(kind + body).to_bytes(4)


def _with_header(data: bytes, *, size: tuple[int, int] | None = None, filtering: int = 0) -> bytes:
    """`data` (a PNG) with its IHDR rewritten, CRC and all."""
    width, height, depth, colour, compression, _, interlace = struct.unpack_from(
        ">IIBBBBB", data, 16
    )
    width, height = size or (width, height)
    body = struct.pack(">IIBBBBB", width, height, depth, colour, compression, filtering, interlace)
    return data[:8] + _chunk(b"IHDR", body) + data[33:]


def _before_image(data: bytes, chunk: bytes) -> bytes:
    return data[:33] + chunk + data[33:]


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(_with_header(_png("L", (2, 2)), size=(2**31 + 5, 1)), id="past-int32"),
        pytest.param(_with_header(_png("L", (2, 2)), size=(20_000, 20_000)), id="bomb"),
        pytest.param(_with_header(_png("L", (2, 2)), filtering=1), id="filter-method"),
        pytest.param(_before_image(_png("L", (2, 2)), _chunk(b"gAMA", b"\x00")), id="short-gama"),
        pytest.param(_before_image(_png("L", (2, 2)), _chunk(b"zTXt", b"k\x00\x07x")), id="ztxt"),
    ],
)
def test_png_header_leaves_what_pillow_reads_otherwise_to_pillow(odd: bytes) -> None:
    # Measured as Pillow measures it, whether the upload came as bytes or as a file: an
    # image Pillow will not open is stored unmeasured, never with a size no Asset can hold.
    assert png_size(odd) is None
    assert probe_file(odd, "image/png") == MediaInfo("image/png")


def test_animated_png_still_gets_its_duration() -> None:
    frames = [Image.new("RGB", (4, 4), (i * 60, 0, 0)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:], duration=250, loop=0)
    data = out.getvalue()
    assert png_size(data) is None
    assert probe_file(data, "image/png") == MediaInfo("image/png", 4, 4, 0.75)
