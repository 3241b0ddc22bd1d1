"""The offline providers, running the real tools on this machine: espeak-ng speaks,
PocketSphinx transcribes that speech back, Pillow restyles images; a missing tool makes its
provider report itself unavailable without taking the worker down."""

from __future__ import annotations

import asyncio
import io
import os
import re
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from genmesh.v1 import generate_service_pb2, job_pb2, provider_service_pb2
from services.common.parameters import dict_to_struct
from services.providers.adapter import Fatal, InvalidInput, Output
from services.providers.config import ProviderConfig
from services.providers.offline import audio, styles
from services.providers.offline.espeak import EspeakAdapter, split_text
from services.providers.offline.pillow import PillowAdapter
from services.providers.offline.pocketsphinx import PocketSphinxAdapter
from services.providers.registry import DEPENDENCIES, FAMILIES
from services.providers.sandbox import media
from tests.conftest import Database
from tests.infra import eventually
from tests.mesh import running_mesh
from tests.providers.harness import FakeContext

TTS = job_pb2.TASK_TEXT_TO_SPEECH
STT = job_pb2.TASK_SPEECH_TO_TEXT
I2I = job_pb2.TASK_IMAGE_TO_IMAGE
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
# A voice PocketSphinx's US English model follows well (chosen by trying espeak-ng's voices).
CLEAR_VOICE: dict[str, Any] = {"voice": "en-us", "variant": "f2", "speed": 140}


def espeak(**options: object) -> EspeakAdapter:
    return EspeakAdapter(ProviderConfig(name="espeak", family="espeak", options=options))


def sphinx(**options: object) -> PocketSphinxAdapter:
    return PocketSphinxAdapter(
        ProviderConfig(name="pocketsphinx", family="pocketsphinx", options=options)
    )


def pillow() -> PillowAdapter:
    return PillowAdapter(ProviderConfig(name="pillow", family="pillow"))


async def speak(text: str, adapter: EspeakAdapter | None = None, **params: object) -> bytes:
    result = await (adapter or espeak()).run(FakeContext(TTS, text, params, provider="espeak"))
    [output] = result.outputs
    assert (output.media_type, output.filename) == ("audio/wav", "speech.wav")
    return output.data


def read_wav(data: bytes) -> tuple[wave._wave_params, npt.NDArray[np.float64]]:
    with wave.open(io.BytesIO(data)) as w:
        params = w.getparams()
        frames = w.readframes(params.nframes)
    # The header's frame count is exact: every frame it promises is there.
    assert len(frames) == params.nframes * params.nchannels * params.sampwidth
    return params, np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768


def encode_wav(samples: npt.NDArray[np.float64], rate: int, width: int, channels: int) -> bytes:
    """`samples` (mono, [-1, 1)) as a PCM WAV of the given format, the channel duplicated."""
    scaled = np.round(samples * ((1 << (8 * width - 1)) - 1)).astype(np.int64)
    if width == 1:  # 8-bit WAV is unsigned
        raw = (scaled + 128).astype(np.uint8).tobytes()
    elif width == 3:  # the low three bytes of each little-endian int32
        raw = scaled.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = scaled.astype("<i2" if width == 2 else "<i4").tobytes()
    # Each sample repeated once per channel: interleaved frames of identical channels.
    interleaved = np.repeat(np.frombuffer(raw, np.uint8).reshape(-1, width), channels, 0)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(interleaved.tobytes())
    return buf.getvalue()


def child_pids(match: str) -> list[int]:
    """Live children of this process whose command line contains `match`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and match in cmdline:
            found.append(int(entry.name))
    return found


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


# --- espeak-ng -----------------------------------------------------------------------------


async def test_espeak_speaks_real_speech() -> None:
    params, samples = read_wav(await speak("Hello world, this is genmesh speaking offline."))
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 22_050)
    seconds = params.nframes / params.framerate
    assert 1.5 < seconds < 8
    # Speech, not silence or a tone: loud enough, and loudness rises and falls (syllables).
    frames = samples[: len(samples) // 441 * 441].reshape(-1, 441)
    loudness = np.sqrt((frames**2).mean(axis=1))
    assert loudness.max() > 0.05
    assert (loudness < 0.2 * loudness.max()).mean() > 0.1
    assert (loudness > 0.4 * loudness.max()).mean() > 0.2


async def test_espeak_speed_changes_the_duration() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    slow, _ = read_wav(await speak(text, speed=100))
    fast, _ = read_wav(await speak(text, speed=300))
    assert slow.nframes > 2 * fast.nframes


async def test_espeak_voice_variant_and_pitch_change_the_sound() -> None:
    text = "Good morning."
    plain = await speak(text)
    assert await speak(text, variant="f2") != plain
    assert await speak(text, pitch=90) != plain
    assert await speak(text, voice="de") != plain


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"voice": "klingon"}, "voice must be a string (one of en-us, en-gb"),
        ({"speed": 1000}, "speed must be an integer (>= 80, <= 450), got 1000"),
        ({"pitch": -1}, "pitch must be an integer (>= 0, <= 99)"),
        ({"variant": "robot"}, "variant must be a string (one of m1,"),
    ],
)
async def test_espeak_rejects_parameters_out_of_contract(
    params: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(named)):
        await speak("hello", **params)


async def test_espeak_rejects_empty_and_too_long_text() -> None:
    with pytest.raises(InvalidInput, match="non-empty prompt"):
        await speak("   ")
    with pytest.raises(InvalidInput, match="at most 20 characters, got 26"):
        await speak("abcdefghijklmnopqrstuvwxyz", espeak(max_chars=20))


async def test_espeak_text_starting_with_a_dash_is_spoken_not_parsed() -> None:
    params, _ = read_wav(await speak("-v xx --help"))
    assert params.nframes / params.framerate > 0.5


async def test_espeak_long_text_reports_progress_and_joins_the_parts() -> None:
    sentence = "This sentence is spoken again and again. "
    text = sentence * 12
    adapter = espeak(piece_chars=120)
    ctx = FakeContext(TTS, text, {}, provider="espeak")
    result = await adapter.run(ctx)
    percents = [p or 0.0 for p, _ in ctx.progress_reports]
    assert len(percents) == len(split_text(text.strip(), 120)) >= 4
    assert percents == sorted(percents) and percents[-1] == pytest.approx(100.0)
    assert ctx.progress_reports[0][1] == f"spoke part 1/{len(percents)}"
    joined, _ = read_wav(result.outputs[0].data)
    single, _ = read_wav(await speak(sentence))
    # Twelve sentences take about twelve times one (the pauses between runs differ a little).
    assert 10 * single.nframes < joined.nframes < 14 * single.nframes


def test_split_text_keeps_sentences_whole_within_the_limit() -> None:
    text = "One two. Three four five! Six?\nSeven " + "x" * 25 + " eight"
    pieces = split_text(text, 12)
    assert all(len(p) <= 12 for p in pieces)
    assert pieces[:3] == ["One two.", "Three four", "five! Six?"]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    assert split_text("Short. Text.", 100) == ["Short. Text."]


async def test_espeak_cancel_kills_the_running_espeak_ng() -> None:
    # One long run (no pieces) that takes seconds, so the cancel lands while it speaks.
    adapter = espeak(piece_chars=100_000, max_chars=100_000)
    text = "The quick brown fox jumps over the lazy dog. " * 450
    ctx = FakeContext(TTS, text, {"speed": 80}, provider="espeak")
    task = asyncio.create_task(adapter.run(ctx))
    # (--stdout: the speaking run, not the one listing the installed voices.)
    [pid] = await eventually(lambda: child_pids("espeak-ng --stdout"), within=10)
    assert exists(pid)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Killed and reaped before run() gave up, long before it would have finished speaking.
    assert not exists(pid)
    assert time.monotonic() - cancelled_at < 1.0
    assert child_pids("espeak-ng --stdout") == []


async def test_missing_espeak_reports_unavailable_and_fails_jobs_cleanly() -> None:
    adapter = espeak(binary="/nonexistent/espeak-ng")
    reason = await adapter.check()
    assert reason == (
        "espeak-ng not installed (/nonexistent/espeak-ng not found): apt-get install espeak-ng"
    )
    with pytest.raises(Fatal) as failed:
        await speak("hello", adapter)
    assert failed.value.code == "provider_unavailable"
    assert failed.value.message == reason
    assert await espeak().check() == ""


def test_espeak_describes_itself_as_offline_with_its_parameters() -> None:
    described = espeak().describe()
    assert described.offline and described.cost_per_job_usd == 0
    assert list(described.tasks) == [TTS]
    by_name = {p.name: p for p in described.parameters}
    assert {"voice", "variant", "speed", "pitch"} <= set(by_name)
    assert "en-us" in by_name["voice"].allowed_values
    assert (by_name["speed"].minimum, by_name["speed"].maximum) == (80, 450)


# --- PocketSphinx ----------------------------------------------------------------------------


async def transcribe(
    data: bytes, adapter: PocketSphinxAdapter | None = None
) -> tuple[str, FakeContext]:
    ctx = FakeContext(STT, "", {}, [data], provider="pocketsphinx")
    result = await (adapter or sphinx()).run(ctx)
    assert not result.outputs  # the runtime stores the text as the output
    return result.text, ctx


async def test_speech_round_trip_through_pocketsphinx() -> None:
    said = [*NUMBERS, "the", "weather", "is", "nice", "today"]
    wav = await speak(" ".join(NUMBERS) + ". the weather is nice today.", **CLEAR_VOICE)
    text, ctx = await transcribe(wav)
    words = text.split()
    # Synthetic speech is not what the model learnt from: most words, not all, come back.
    assert sum(w in words for w in said) >= 12, words
    assert {"weather", "nice", "today"} <= set(words), words
    first, *decoded = ctx.progress_reports
    assert first[0] == 0.0 and first[1].startswith("decoding ")
    assert decoded and all(message.startswith("decoded ") for _, message in decoded)
    assert 50 < (decoded[-1][0] or 0) <= 100


async def test_pocketsphinx_converts_rate_channels_and_width() -> None:
    """espeak-ng's 22.05 kHz mono speech, re-encoded as 44.1 kHz stereo 24-bit, still reads."""
    _, samples = read_wav(await speak(" ".join(NUMBERS), **CLEAR_VOICE))
    upsampled = audio.resample(samples, 22_050, 44_100)
    wav = encode_wav(upsampled, 44_100, 3, 2)
    text, _ = await transcribe(wav)
    words = text.split()
    assert sum(n in words for n in NUMBERS) >= 8, words


@pytest.mark.parametrize(("rate", "width", "channels"), [(8000, 1, 1), (48_000, 4, 2)])
def test_speech_pcm_is_16khz_mono_16bit_with_the_same_tone(
    rate: int, width: int, channels: int
) -> None:
    seconds, tone = 0.5, 440.0
    t = np.arange(int(rate * seconds)) / rate
    wav = encode_wav(0.5 * np.sin(2 * np.pi * tone * t), rate, width, channels)
    pcm = np.frombuffer(audio.speech_pcm(wav), dtype="<i2").astype(np.float64)
    assert pcm.size == int(audio.SPEECH_RATE * seconds)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak = np.argmax(spectrum) * audio.SPEECH_RATE / pcm.size
    assert peak == pytest.approx(tone, abs=4)
    assert np.abs(pcm).max() / 32768 == pytest.approx(0.5, abs=0.05)


async def test_pocketsphinx_rejects_what_is_not_a_pcm_wav() -> None:
    with pytest.raises(InvalidInput, match="reads PCM WAV audio: not a PCM WAV file"):
        await transcribe(b"ID3\x03 this is an mp3, honest")
    with pytest.raises(InvalidInput, match=r"at most 1 s, got 2\.0 s"):
        silent = encode_wav(np.zeros(32_000), 16_000, 2, 1)
        await transcribe(silent, sphinx(max_seconds=1))


async def test_pocketsphinx_hears_nothing_in_silence() -> None:
    text, _ = await transcribe(encode_wav(np.zeros(16_000), 16_000, 2, 1))
    assert text == ""


async def test_pocketsphinx_cancel_kills_the_decoder() -> None:
    wav = await speak("one two three four five six seven eight nine ten. " * 25, **CLEAR_VOICE)
    ctx = FakeContext(STT, "", {}, [wav], provider="pocketsphinx")
    task = asyncio.create_task(sphinx().run(ctx))
    # Decoding has begun: the child is running and has reported a stretch of speech.
    await eventually(lambda: len(ctx.progress_reports) >= 2, within=30)
    [pid] = child_pids("sphinx_decode")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not exists(pid)


async def test_missing_pocketsphinx_model_reports_unavailable() -> None:
    adapter = sphinx(hmm="/nonexistent/en-us")
    reason = await adapter.check()
    assert reason == "pocketsphinx acoustic model not found: /nonexistent/en-us"
    with pytest.raises(Fatal, match="acoustic model not found") as failed:
        await transcribe(encode_wav(np.zeros(1600), 16_000, 2, 1), adapter)
    assert failed.value.code == "provider_unavailable"
    assert await sphinx().check() == ""


# --- Pillow ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A busy 300x200 picture, so every look visibly changes it."""
    return media.text_to_image("a harbour at dusk", 11, 300, 200)


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def restyle(data: bytes, **params: object) -> tuple[Output, FakeContext]:
    ctx = FakeContext(I2I, "", params, [data], provider="pillow")
    result = await pillow().run(ctx)
    [output] = result.outputs
    return output, ctx


async def test_every_style_gives_a_different_image_of_the_size_asked_preview_first(
    photo: bytes,
) -> None:
    results: dict[str, npt.NDArray[np.int16]] = {}
    for style in styles.STYLES:
        output, ctx = await restyle(photo, style=style, width=160, height=120)
        assert output.media_type == "image/png" and output.filename == f"{style}.png"
        image = open_image(output.data)
        assert image.format == "PNG" and image.size == (160, 120)
        # The preview came before anything else, small, in the result's proportions.
        assert ctx.timeline[0][0] == "preview"
        [preview] = ctx.previews
        small = open_image(preview.data)
        assert small.size == (128, 96)
        results[style] = np.asarray(image.convert("RGB"), dtype=np.int16)
    for a in styles.STYLES:
        for b in styles.STYLES:
            if a < b:
                assert np.abs(results[a] - results[b]).mean() > 3, (a, b)


@pytest.mark.parametrize(
    ("prompt", "style"),
    [("in Sepia, please", "sepia"), ("make it a cartoon, not a sketch", "cartoon"), ("", "sketch")],
)
async def test_without_a_style_the_prompt_names_it(photo: bytes, prompt: str, style: str) -> None:
    ctx = FakeContext(I2I, prompt, {}, [photo], provider="pillow")
    [output] = (await pillow().run(ctx)).outputs
    assert output.filename == f"{style}.png"
    # A style set as a parameter wins over the prompt.
    ctx = FakeContext(I2I, prompt, {"style": "blur"}, [photo], provider="pillow")
    [output] = (await pillow().run(ctx)).outputs
    assert output.filename == "blur.png"


async def test_styles_do_what_they_say(photo: bytes) -> None:
    async def pixels(**params: object) -> npt.NDArray[np.int16]:
        output, _ = await restyle(photo, **params)
        return np.asarray(open_image(output.data).convert("RGB"), dtype=np.int16)

    plain = await pixels(style="resize")
    sepia = await pixels(style="sepia")
    assert (sepia[..., 0] >= sepia[..., 1]).all() and (sepia[..., 1] >= sepia[..., 2]).all()
    sketch = await pixels(style="sketch")
    assert (sketch[..., 0] == sketch[..., 1]).all() and (sketch[..., 1] == sketch[..., 2]).all()
    poster = await pixels(style="posterize", bits=2)
    assert all(len(np.unique(poster[..., c])) <= 4 for c in range(3))
    assert len(np.unique(plain[..., 0])) > 4

    def roughness(p: npt.NDArray[np.int16]) -> float:
        return float(np.abs(np.diff(p, axis=1)).mean())

    assert roughness(await pixels(style="blur", radius=6)) < 0.6 * roughness(plain)
    cartoon = await pixels(style="cartoon")
    assert (cartoon.sum(axis=2) < 100).mean() > 0.01  # dark outlines
    assert len(np.unique(cartoon.reshape(-1, 3), axis=0)) < len(
        np.unique(plain.reshape(-1, 3), axis=0)
    )


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({}, (300, 200)),
        ({"width": 150}, (150, 100)),
        ({"height": 50}, (75, 50)),
        ({"width": 100, "height": 100, "fit": "cover"}, (100, 100)),
        ({"width": 100, "height": 100, "fit": "contain"}, (100, 67)),
        ({"width": 100, "height": 100, "fit": "pad"}, (100, 100)),
        ({"width": 100, "height": 100, "fit": "stretch"}, (100, 100)),
    ],
)
async def test_geometry(photo: bytes, params: dict[str, object], size: tuple[int, int]) -> None:
    output, _ = await restyle(photo, style="resize", **params)
    image = open_image(output.data)
    assert image.size == size
    if params.get("fit") == "pad":
        # Letterboxed: transparent bands above and below the picture.
        alpha = np.asarray(image.getchannel("A"))
        assert alpha[0].max() == 0 and alpha[50].min() == 255


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_output_formats(photo: bytes, fmt: str, pil: str) -> None:
    output, _ = await restyle(photo, style="sepia", format=fmt)
    assert output.media_type == f"image/{fmt}"
    assert open_image(output.data).format == pil


async def test_pillow_rejects_bad_input(photo: bytes) -> None:
    with pytest.raises(InvalidInput, match="not a readable image") as refused:
        await restyle(b"\x89PNG but not really")
    assert "BytesIO" not in str(refused.value)
    bad_style = re.escape("style must be a string (one of sketch, sepia")
    with pytest.raises(InvalidInput, match=bad_style):
        await restyle(photo, style="impressionist")
    with pytest.raises(InvalidInput, match="width must be an integer"):
        await restyle(photo, width=5000)
    big = PillowAdapter(ProviderConfig(name="p", family="pillow", options={"max_pixels": 100}))
    with pytest.raises(InvalidInput, match="image is 300x200; at most 100 pixels"):
        await big.run(FakeContext(I2I, "", {}, [photo], provider="p"))


# --- in a real worker ------------------------------------------------------------------------


async def test_auto_worker_serves_offline_providers_and_survives_missing_ones(
    nats_url: str, nats_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "auto" leaves out a family whose package is not installed; espeak without its binary
    is listed unavailable with the reason, its jobs fail cleanly, and the worker goes on."""
    # A family whose module is a package of its own, never installed here.
    monkeypatch.setitem(DEPENDENCIES, "genmesh_ghost_sdk", "genmesh-ghost-sdk")
    monkeypatch.setitem(FAMILIES, "ghost", "genmesh_ghost_sdk:Ghost")
    catalog = tmp_path / "providers.toml"
    catalog.write_text(
        """
[[providers]]
name = "sandbox"
family = "sandbox"

[[providers]]
name = "espeak"
family = "espeak"
options = { binary = "/nonexistent/espeak-ng" }

[[providers]]
name = "ghost"
family = "ghost"
"""
    )
    database = Database(f"sqlite:///{tmp_path / 'router.db'}", "", "sqlite")
    overrides = {"GENMESH_WORKER_PROVIDERS": "auto", "GENMESH_PROVIDERS_FILE": str(catalog)}
    async with running_mesh(
        nats_url=nats_url,
        prefix=nats_prefix,
        database=database,
        data_dir=tmp_path,
        worker_overrides=overrides,
    ) as mesh:
        await mesh.wait_for_provider("espeak")
        reply = await mesh.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
        by_name = {p.name: p for p in reply.providers}
        assert set(by_name) == {"sandbox", "espeak"}
        espeak_health = by_name["espeak"].health
        assert espeak_health.status == provider_service_pb2.PROVIDER_STATUS_UNAVAILABLE
        assert "espeak-ng not installed" in espeak_health.reason
        assert "apt-get install espeak-ng" in espeak_health.reason

        async def run(spec: job_pb2.JobSpec) -> job_pb2.JobEvent:
            submitted = await mesh.generate.Submit(generate_service_pb2.SubmitRequest(spec=spec))
            return (await mesh.watch(submitted.job.id))[-1]

        failed = await run(job_pb2.JobSpec(task=TTS, prompt="hello", provider="espeak"))
        assert failed.state == job_pb2.JOB_STATE_FAILED
        assert failed.error.code == "provider_unavailable"
        assert "apt-get install espeak-ng" in failed.error.message
        done = await run(
            job_pb2.JobSpec(
                task=TTS,
                prompt="hello",
                provider="sandbox",
                parameters=dict_to_struct({"latency_ms": 0}),
            )
        )
        assert done.state == job_pb2.JOB_STATE_COMPLETED
