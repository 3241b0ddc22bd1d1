"""Long prompts as people write them: a subject, padding, repeats, and details worth keeping."""

from __future__ import annotations

import itertools

OPENING = (
    "Please could you create a watercolor painting of a red fox sitting in a snowy birch "
    "forest at dawn, with golden hour lighting."
)
# Style and quality terms buried deep in the prompt, where a plain cut would lose them.
MIDDLE = "The whole scene should feel like art nouveau, with intricate linework."
ENDING = "Finally, make it highly detailed, 8k, sharp focus."
FILLER = (
    "I would really like you to basically just do what I asked, and it is very important "
    "that you make sure that it is kind of like what I said before."
)
REPEAT = "The fox is red and it sits in the snowy birch forest."
KEPT_TERMS: tuple[str, ...] = (
    "fox", "watercolor", "golden hour", "art nouveau", "intricate", "highly detailed", "8k",
    "sharp focus", "forest",
)  # fmt: skip


def _details() -> itertools.cycle[str]:
    colours = ["frozen", "distant", "tiny", "ancient", "crooked", "silver", "quiet", "pale"]
    things = ["cabin", "river", "bridge", "owl", "lantern", "deer", "fence", "hill", "sled"]
    places = ["the pines", "the lake", "the old path", "the rocks", "the stream"]
    return itertools.cycle(
        f"Somewhere behind the fox stands a {c} {t} near {p}, half hidden by soft mist."
        for c, t, p in itertools.product(colours, things, places)
    )


def long_image_prompt(length: int) -> str:
    """At least `length` characters (at most a detail more): OPENING, padding, MIDDLE, ENDING."""
    details = _details()
    parts = [OPENING]
    index = 0
    while len(" ".join(parts)) + 1 + len(ENDING) < length:
        parts.append((FILLER, REPEAT, next(details), next(details))[index % 4])
        if index == 12:
            parts.append(MIDDLE)
        index += 1
    return " ".join([*parts, ENDING])
