"""Prompt validation and analysis: pure functions, no I/O, shared by every transport."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from genmesh.v1 import job_pb2
from services.common.tasks import PROMPT_OPTIONAL

# Violation codes, as the contract spells them.
EMPTY = "empty"
TOO_LONG = "too_long"
CONTROL_CHARACTERS = "control_characters"

# C0 controls (U+0000..U+001F) break tokenizers and logs; tab, LF and CR are layout, so allowed.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")

# Letters/digits joined by apostrophes or hyphens ("don't", "well-known") count as one word.
WORD = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*")
# A sentence ends at terminal punctuation followed by space or the end, or at a line break,
# so "3.5" and "v1.2" do not split while prompt lists written one item per line do. The
# full-width stop, exclamation and question marks of Chinese and Japanese end one wherever
# they stand, since no space follows them.
_SENTENCE_END = re.compile(r"[.!?\u2026]+(?=\s|$)|[\u3002\uff61\uff0e\uff01\uff1f]+|\n")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")

MAX_KEYWORDS = 10
# Words of this many syllables or more count as long (the Gunning fog "complex word").
LONG_WORD_SYLLABLES = 3
# Complexity saturates at these: 40 words a sentence, or 40% long words, is as hard as it gets.
_SATURATING_WORDS_PER_SENTENCE = 40.0
_SATURATING_LONG_WORD_SHARE = 0.4

# Common English function words; a short fixed list keeps analysis dependency-free.
_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each etc few for from further get gets got had hadn't has
    hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his
    how how's i i'd i'll i'm i've if in into is isn't it it's its itself just let's like make
    me more most much must mustn't my myself no nor not now of off on once only or other ought
    our ours ourselves out over own please same shall shan't she she'd she'll she's should
    shouldn't so some such than that that's the their theirs them themselves then there
    there's these they they'd they'll they're they've this those through to too under until
    up upon us very via was wasn't we we'd we'll we're we've were weren't what what's when
    when's where where's which while who who's whom why why's will with within without won't
    would wouldn't you you'd you'll you're you've your yours yourself yourselves
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORDS_TEXT.split())


@dataclass(frozen=True)
class Violation:
    """One thing wrong with a prompt: a stable code and a sentence for a person."""

    code: str
    message: str


@dataclass(frozen=True)
class Analysis:
    """What a prompt looks like to a reader; see AnalyzePromptResponse for each field."""

    length: int
    words: int
    sentences: int
    readability: float
    complexity: float
    keywords: tuple[str, ...]


def missing(prompt: str, task: job_pb2.Task.ValueType) -> bool:
    """True when `task` needs a prompt and `prompt` is blank (the EMPTY violation)."""
    return not prompt.strip() and task not in PROMPT_OPTIONAL


def validate(prompt: str, task: job_pb2.Task.ValueType, max_length: int) -> list[Violation]:
    """Everything wrong with `prompt` for `task`; empty when it may be sent as it is."""
    violations: list[Violation] = []
    if missing(prompt, task):
        violations.append(Violation(EMPTY, "prompt is empty; this task needs one"))
    length = len(prompt)
    if length > max_length:
        violations.append(
            Violation(TOO_LONG, f"prompt is {length:,} characters; the limit is {max_length:,}")
        )
    controls = [m.start() for m in _CONTROL.finditer(prompt)]
    if controls:
        first = controls[0]
        noun = "character" if len(controls) == 1 else "characters"
        violations.append(
            Violation(
                CONTROL_CHARACTERS,
                f"prompt contains {len(controls)} control {noun}"
                f" (first U+{ord(prompt[first]):04X} at position {first})",
            )
        )
    return violations


def analyze(prompt: str) -> Analysis:
    """Length, words, sentences, Flesch reading ease, a 0..1 complexity and top keywords."""
    words = [w.replace("\u2019", "'") for w in WORD.findall(prompt)]
    if not words:
        return Analysis(len(prompt), 0, 0, 0.0, 0.0, ())
    sentences = max(1, _count_sentences(prompt))
    syllables = [count_syllables(w) for w in words]
    words_per_sentence = len(words) / sentences
    readability = 206.835 - 1.015 * words_per_sentence - 84.6 * (sum(syllables) / len(words))
    long_share = sum(1 for s in syllables if s >= LONG_WORD_SYLLABLES) / len(words)
    complexity = (
        min(words_per_sentence / _SATURATING_WORDS_PER_SENTENCE, 1.0)
        + min(long_share / _SATURATING_LONG_WORD_SHARE, 1.0)
    ) / 2
    return Analysis(
        length=len(prompt),
        words=len(words),
        sentences=sentences,
        readability=round(readability, 2),
        complexity=round(complexity, 4),
        keywords=keywords(words),
    )


def keywords(words: list[str], limit: int = MAX_KEYWORDS) -> tuple[str, ...]:
    """The most frequent non-stopwords, ties broken by first appearance."""
    counts: Counter[str] = Counter()
    for word in words:
        key = word.lower()
        if key.endswith("'s"):
            key = key[:-2]
        # Single letters and bare numbers say nothing about the subject of a prompt.
        if len(key) < 2 or key in STOPWORDS or key.isdigit():
            continue
        counts[key] += 1
    # Counter keeps insertion order and most_common() is a stable sort, hence first appearance.
    return tuple(word for word, _ in counts.most_common(limit))


def count_syllables(word: str) -> int:
    """English syllables by vowel groups, minus a silent final e; at least one."""
    w = word.lower().replace("'", "")
    groups = len(_VOWEL_GROUP.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1
    return max(1, groups)


def _count_sentences(text: str) -> int:
    return sum(1 for part in _SENTENCE_END.split(text) if WORD.search(part))
