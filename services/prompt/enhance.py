"""EnhancePrompt's core: style, framing and quality hints an image or video prompt lacks."""

from __future__ import annotations

from genmesh.v1 import job_pb2
from services.prompt.terms import LIGHTING_TERMS, STYLE_TERMS, found, has_term

# Width/height beyond this ratio either way counts as wide or tall; between, square.
_SQUARE_TOLERANCE = 1.2
_STYLE_HINT = "balanced composition, cohesive color palette"
_LIGHTING_HINT = "soft natural lighting"
# Each quality hint, and the terms that already say it.
_QUALITY_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("highly detailed", ("detailed", "ultra-detailed", "hyperdetailed", "intricate")),
    ("sharp focus", ("sharp focus", "crisp")),
    ("high resolution", ("high resolution", "high-resolution", "hi-res", "4k", "8k", "16k", "uhd")),
)
_MOTION_HINT = "smooth natural motion"
_MOTION_WORDS = ("motion", "moving", "movement", "pan", "panning", "zoom", "camera", "slow")


def enhance(
    prompt: str,
    task: job_pb2.Task.ValueType,
    width: int = 0,
    height: int = 0,
    max_length: int = 10_000,
) -> job_pb2.PromptEnhancement:
    """`prompt` with the hints it lacks appended, never past `max_length` characters."""
    hints: list[str] = []
    if framing := _framing(width, height):
        hints.append(framing)
    if not found(prompt, STYLE_TERMS) and not has_term(prompt, "composition"):
        hints.append(_STYLE_HINT)
    if not found(prompt, LIGHTING_TERMS):
        hints.append(_LIGHTING_HINT)
    if task == job_pb2.TASK_IMAGE_TO_VIDEO and not any(has_term(prompt, w) for w in _MOTION_WORDS):
        hints.append(_MOTION_HINT)
    hints += [h for h, said in _QUALITY_HINTS if not any(has_term(prompt, t) for t in said)]
    # Near the limit, the earlier (more telling) hints that fit win over later ones.
    kept: list[str] = []
    for hint in hints:
        if len(_joined(prompt, [*kept, hint])) <= max_length:
            kept.append(hint)
    hints = kept
    return job_pb2.PromptEnhancement(
        hints=hints, original_prompt=prompt, enhanced_prompt=_joined(prompt, hints)
    )


def _framing(width: int, height: int) -> str:
    if width <= 0 or height <= 0:
        return ""
    ratio = width / height
    if ratio > _SQUARE_TOLERANCE:
        return "wide landscape framing"
    if ratio < 1 / _SQUARE_TOLERANCE:
        return "tall portrait framing"
    return "square framing"


def _joined(prompt: str, hints: list[str]) -> str:
    base = prompt.rstrip().rstrip(",;")
    if not hints:
        return prompt
    if not base:
        return ", ".join(hints)
    separator = " " if base.endswith((".", "!", "?")) else ", "
    return base + separator + ", ".join(hints)
