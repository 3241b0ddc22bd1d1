"""Media type parsing and sniffing, and measuring files that `wave` cannot read."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.storage.probe import normalize_media_type, probe_file, sniff_media_type


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
