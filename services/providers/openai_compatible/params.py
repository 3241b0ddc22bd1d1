"""The parameters an openai_compatible instance accepts, and the limits of known image models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genmesh.v1 import job_pb2
from services.providers.adapter import InvalidInput
from services.providers.params import INT, NUM, STR, Param

TEXT, VISION = job_pb2.TASK_TEXT_TO_TEXT, job_pb2.TASK_IMAGE_TO_TEXT
DRAW, EDIT = job_pb2.TASK_TEXT_TO_IMAGE, job_pb2.TASK_IMAGE_TO_IMAGE
SPEAK, LISTEN = job_pb2.TASK_TEXT_TO_SPEECH, job_pb2.TASK_SPEECH_TO_TEXT
CHAT = (TEXT, VISION)
IMAGES = (DRAW, EDIT)

SIZES = (
    "auto",
    "256x256",
    "512x512",
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "1792x1024",
    "1024x1792",
)
QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
AUDIO_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

PARAMS: tuple[Param, ...] = (
    Param("system", STR, "System message sent before the prompt.", "", tasks=CHAT),
    Param("temperature", NUM, "Sampling temperature; higher is freer.", None, 0, 2, tasks=CHAT),
    Param("top_p", NUM, "Sample only from this much probability mass.", None, 0, 1, tasks=CHAT),
    Param("max_tokens", INT, "Most tokens to generate.", None, 1, 1_000_000, tasks=CHAT),
    Param("seed", INT, "Best-effort reproducible sampling.", None, 0, 2**31 - 1, tasks=CHAT),
    # Named as the pipelines' product-copy step asks every text provider; the speech
    # response_format below is another parameter for another task.
    Param(
        "response_format",
        STR,
        'text, or json: the answer is one JSON object (OpenAI\'s {"type": "json_object"}; '
        "the prompt must mention JSON).",
        "text",
        allowed=("text", "json"),
        tasks=CHAT,
    ),
    Param(
        "detail",
        STR,
        "How closely the model looks at the image (more detail costs more tokens).",
        "auto",
        allowed=("auto", "low", "high"),
        tasks=(VISION,),
    ),
    Param(
        "size",
        STR,
        "Image size. GPT image models: auto, 1024x1024, 1536x1024, 1024x1536; dall-e-3: "
        "1024x1024, 1792x1024, 1024x1792; dall-e-2: 256x256, 512x512, 1024x1024.",
        "1024x1024",
        allowed=SIZES,
        tasks=IMAGES,
    ),
    Param(
        "quality",
        STR,
        "GPT image models: auto, low, medium, high; dall-e-3: standard, hd.",
        None,
        allowed=QUALITIES,
        tasks=IMAGES,
    ),
    Param("n", INT, "Number of images (dall-e-3: 1).", 1, 1, 10, tasks=IMAGES),
    Param(
        "background",
        STR,
        "Background of GPT image models' output; transparent needs png or webp.",
        None,
        allowed=("auto", "transparent", "opaque"),
        tasks=IMAGES,
    ),
    Param(
        "output_format",
        STR,
        "File format of GPT image models' output.",
        None,
        allowed=("png", "jpeg", "webp"),
        tasks=IMAGES,
    ),
    Param(
        "style",
        STR,
        "dall-e-3 only: vivid or natural.",
        None,
        allowed=("vivid", "natural"),
        tasks=(DRAW,),
    ),
    Param(
        "partial_images",
        INT,
        "Previews streamed while a GPT image model renders (each costs extra tokens).",
        0,
        0,
        3,
        tasks=IMAGES,
    ),
    Param("voice", STR, "The speaking voice.", "alloy", allowed=VOICES, tasks=(SPEAK,)),
    Param(
        "response_format",
        STR,
        "Audio format (pcm: raw 24 kHz 16-bit mono).",
        "mp3",
        allowed=AUDIO_FORMATS,
        tasks=(SPEAK,),
    ),
    Param("speed", NUM, "Speaking speed.", 1.0, 0.25, 4.0, tasks=(SPEAK,)),
    Param(
        "instructions",
        STR,
        "How to speak (tone, accent, pace); gpt-4o-mini-tts and newer.",
        None,
        tasks=(SPEAK,),
    ),
    Param(
        "language",
        STR,
        "ISO-639-1 code of the spoken language (e.g. en); improves accuracy and latency.",
        None,
        tasks=(LISTEN,),
    ),
)


@dataclass(frozen=True)
class ImageModel:
    """What one image model family accepts, so a bad value fails before it is paid for."""

    family: str
    sizes: tuple[str, ...] = SIZES
    qualities: tuple[str, ...] = QUALITIES
    max_n: int = 10
    # GPT image models always answer base64 and reject response_format; they alone stream.
    gpt_image: bool = False
    # Parameters the family does not take at all.
    unsupported: tuple[str, ...] = ()

    def check(self, params: Mapping[str, Any]) -> None:
        """InvalidInput naming the parameter and what this model allows."""
        _allowed("size", params.get("size"), self.sizes, self.family)
        _allowed("quality", params.get("quality"), self.qualities, self.family)
        if params.get("n", 1) > self.max_n:
            raise InvalidInput(
                "invalid_parameter",
                f"n must be <= {self.max_n} for {self.family}, got {params['n']}",
            )
        for name in self.unsupported:
            if params.get(name):
                raise InvalidInput(
                    "invalid_parameter", f"{name} is not supported by {self.family} models"
                )


_GPT_ONLY = ("background", "output_format", "partial_images")
_KNOWN = (
    ImageModel(
        "gpt-image",
        sizes=("auto", "1024x1024", "1536x1024", "1024x1536"),
        qualities=("auto", "low", "medium", "high"),
        gpt_image=True,
        unsupported=("style",),
    ),
    ImageModel(
        "dall-e-3",
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        qualities=("standard", "hd"),
        max_n=1,
        unsupported=_GPT_ONLY,
    ),
    ImageModel(
        "dall-e-2",
        sizes=("256x256", "512x512", "1024x1024"),
        qualities=("standard",),
        unsupported=(*_GPT_ONLY, "style"),
    ),
)


def image_model(model: str) -> ImageModel:
    """Limits of a known OpenAI image model; another server's models are left to the server."""
    for known in _KNOWN:
        if model.startswith(known.family):
            return known
    return ImageModel(model)


def _allowed(name: str, value: Any, allowed: tuple[str, ...], family: str) -> None:
    if value is not None and value not in allowed:
        raise InvalidInput(
            "invalid_parameter",
            f"{name} must be one of {', '.join(allowed)} for {family}, got {value!r}",
        )
