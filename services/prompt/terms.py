"""The words that carry a prompt's style and quality, and finding them in text.

Optimization must not lose them and enhancement must not add them twice, so both read
the same short, fixed vocabularies here.
"""

from __future__ import annotations

import re
from functools import cache

from services.prompt.core import WORD, keywords

# Art styles, media and rendering looks.
STYLE_TERMS: tuple[str, ...] = (
    "photorealistic", "photograph", "photo", "realistic", "cinematic", "watercolor",
    "watercolour", "oil painting", "acrylic", "gouache", "pastel", "charcoal", "pencil sketch",
    "sketch", "ink", "illustration", "digital art", "digital painting", "concept art",
    "anime", "manga", "comic", "cartoon", "pixel art", "low poly", "isometric", "3d render",
    "claymation", "vector art", "flat design", "minimalist", "surreal", "surrealism",
    "impressionist", "impressionism", "expressionist", "art deco", "art nouveau", "baroque",
    "renaissance", "gothic", "cyberpunk", "steampunk", "vaporwave", "synthwave", "noir",
    "vintage", "retro", "fantasy", "sci-fi", "ukiyo-e", "pop art", "studio ghibli",
    "bokeh", "macro", "long exposure", "tilt-shift", "film grain", "black and white",
    "monochrome",
)  # fmt: skip

# Light, which image prompts name almost as often as style.
LIGHTING_TERMS: tuple[str, ...] = (
    "lighting", "light", "golden hour", "blue hour", "backlit", "rim light", "volumetric",
    "neon", "sunlight", "moonlight", "candlelight", "studio lighting", "chiaroscuro",
)  # fmt: skip

# Quality and resolution boosters.
QUALITY_TERMS: tuple[str, ...] = (
    "4k", "8k", "16k", "uhd", "hdr", "high resolution", "high-resolution", "hi-res",
    "highly detailed", "ultra detailed", "ultra-detailed", "hyperdetailed", "hyperrealistic",
    "detailed", "intricate", "sharp focus", "masterpiece", "best quality", "high quality",
    "professional", "award-winning", "award winning", "octane render", "unreal engine",
    "ray tracing", "trending on artstation", "crisp",
)  # fmt: skip

# Subject words kept besides style and quality terms.
SUBJECT_KEYWORDS = 6


@cache
def _pattern(term: str) -> re.Pattern[str]:
    # Word boundaries on both sides, so "ink" does not match "pink" nor "4k" match "64k".
    return re.compile(r"(?<![\w-])" + re.escape(term) + r"(?![\w-])", re.IGNORECASE)


def has_term(text: str, term: str) -> bool:
    """Whether `term` appears in `text` as whole words, ignoring case."""
    return _pattern(term).search(text) is not None


def found(text: str, vocabulary: tuple[str, ...]) -> list[str]:
    """The vocabulary's terms present in `text`, longest first, without terms inside others."""
    hits: list[str] = []
    for term in sorted(vocabulary, key=len, reverse=True):
        if has_term(text, term) and not any(term in longer for longer in hits):
            hits.append(term)
    return hits


def protected_terms(text: str) -> list[str]:
    """Style, lighting and quality terms in `text`, then its main subject words."""
    terms = found(text, STYLE_TERMS) + found(text, LIGHTING_TERMS) + found(text, QUALITY_TERMS)
    words = WORD.findall(text)
    taken = {w for term in terms for w in term.split()}
    subject = [w for w in keywords(words, limit=SUBJECT_KEYWORDS + len(taken)) if w not in taken]
    return terms + subject[:SUBJECT_KEYWORDS]


def missing_terms(text: str, terms: list[str]) -> list[str]:
    """Those of `terms` that `text` lacks."""
    return [term for term in terms if not has_term(text, term)]
