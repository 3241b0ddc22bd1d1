"""Deterministic prompt compression: what OptimizePrompt does when no language model helps.

Steps, each only as far as needed: strip filler phrases, drop clauses that repeat what was
already said or are mostly function words, keep the highest-value clauses (the opening one,
those naming style, quality or subject terms) in their original order, re-append any
protected term that fell out, and as a last resort cut at a sentence or clause boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.prompt.core import STOPWORDS, WORD
from services.prompt.terms import has_term, missing_terms, protected_terms

# Phrases that ask politely or hedge; a generator ignores them, so they cost only length.
_FILLER = [
    (re.compile(p, re.IGNORECASE), r)
    for p, r in (
        (r"\b(?:please|kindly)\b", ""),
        (r"\b(?:i|we)(?:'d| would) (?:really )?(?:like|love)(?: you)?(?: to)?\b", ""),
        (r"\b(?:i|we) (?:want|need)(?: you)?(?: to)?\b", ""),
        (r"\b(?:can|could|would) you\b", ""),
        (r"\bmake sure(?: that)?\b", ""),
        (r"\bit is (?:very |really )?(?:important|essential|crucial) (?:that|to)\b", ""),
        (r"\b(?:kind|sort) of\b", ""),
        (r"\b(?:and so on|and so forth|etc\.?)", ""),
        (r"\bin order to\b", "to"),
        (r"\b(?:really|very|quite|basically|actually|just|literally|simply|definitely)\b", ""),
        (r"\b(?:extremely|totally|absolutely|somewhat|rather)\b", ""),
    )
]
_SENTENCE = re.compile(r"(?<=[.!?\u2026])\s+|\n+")
_CLAUSE = re.compile(r"\s*[,;:]\s+|\s+[-\u2013\u2014]\s+")
_SPACES = re.compile(r"[ \t]{2,}")
_LEADING_JUNK = re.compile(r"^(?:(?:and|but|so|also|then|or)\b[\s,]*|[\s,;:.\-]+)+", re.IGNORECASE)
# Clauses of at least this many words whose content-word share is below the minimum say
# little ("and it should be as it is in the one that we had").
_MIN_WORDS_FOR_DENSITY = 4
_MIN_CONTENT_SHARE = 0.34
# Score weights: a protected term outweighs a subject word, which outweighs density.
_TERM_WEIGHT = 3.0
_OPENING_BONUS = 100.0


@dataclass
class _Clause:
    sentence: int
    position: int
    text: str
    score: float = 0.0


def compress(prompt: str, below: int) -> str:
    """`prompt` shortened to fewer than `below` characters, keeping subject, style and quality."""
    budget = below - 1
    if len(prompt) <= budget:
        return prompt
    clauses = _clauses(prompt)
    if not clauses:
        return _truncate(" ".join(prompt.split()), budget)
    terms = _key_terms(clauses)
    clauses = _without_repeats_and_padding(clauses, terms)
    _score(clauses, terms)
    chosen = _fit(clauses, budget)
    # Each pass drops the weakest clause, making room for terms that fell out with others.
    while chosen:
        text = _assemble(chosen, missing_terms(_assemble(chosen, []), terms))
        if len(text) <= budget:
            return text
        chosen.remove(min(chosen, key=lambda c: (c.score, -c.position)))
    return _truncate(", ".join(terms) + "." if terms else _assemble(clauses, []), budget)


def key_terms(prompt: str) -> list[str]:
    """The style, lighting, quality and subject terms a compressed `prompt` must keep."""
    return _key_terms(_clauses(prompt))


def _key_terms(clauses: list[_Clause]) -> list[str]:
    # Each distinct clause counted once, so repeated filler cannot pose as the subject.
    return protected_terms(". ".join(dict.fromkeys(c.text for c in clauses)))


def strip_filler(text: str) -> str:
    """`text` without politeness and hedging phrases, spaces tidied."""
    for pattern, replacement in _FILLER:
        text = pattern.sub(replacement, text)
    text = _SPACES.sub(" ", text).strip()
    return _LEADING_JUNK.sub("", text).strip()


def _clauses(prompt: str) -> list[_Clause]:
    out: list[_Clause] = []
    for s, sentence in enumerate(_SENTENCE.split(prompt)):
        for piece in _CLAUSE.split(sentence.strip().rstrip(".!?\u2026")):
            text = strip_filler(piece)
            if WORD.search(text):
                out.append(_Clause(s, len(out), text))
    return out


def _content(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text) if w.lower() not in STOPWORDS]


def _without_repeats_and_padding(clauses: list[_Clause], terms: list[str]) -> list[_Clause]:
    """Drop clauses whose content words were all said before, or that are mostly padding."""
    seen: set[str] = set()
    kept: list[_Clause] = []
    for clause in clauses:
        words = WORD.findall(clause.text)
        content = _content(clause.text)
        if not content or set(content) <= seen:
            continue
        dense = len(content) / len(words) >= _MIN_CONTENT_SHARE
        named = any(has_term(clause.text, t) for t in terms)
        if len(words) >= _MIN_WORDS_FOR_DENSITY and not dense and not named:
            continue
        seen.update(content)
        kept.append(clause)
    return kept


def _score(clauses: list[_Clause], terms: list[str]) -> None:
    for clause in clauses:
        words = WORD.findall(clause.text)
        hits = sum(1 for t in terms if has_term(clause.text, t))
        # Terms per length, so one long rambling clause does not beat three tight ones.
        clause.score = _TERM_WEIGHT * hits / max(1.0, len(words) / 8) + (
            len(_content(clause.text)) / max(1, len(words))
        )
    if clauses:
        # The opening clause usually names the subject ("a watercolor of a fox ...").
        clauses[0].score += _OPENING_BONUS


def _fit(clauses: list[_Clause], budget: int) -> list[_Clause]:
    """Best-scoring clauses that fit the budget together, back in their original order."""
    chosen: list[_Clause] = []
    used = 0
    for clause in sorted(clauses, key=lambda c: (-c.score, c.position)):
        cost = len(clause.text) + 2
        if used + cost <= budget:
            chosen.append(clause)
            used += cost
    if not chosen and clauses:
        # Even the best clause alone is too long: keep its start, cut at a boundary.
        best = max(clauses, key=lambda c: (c.score, -c.position))
        chosen = [_Clause(best.sentence, best.position, _truncate(best.text, budget // 2))]
    return sorted(chosen, key=lambda c: c.position)


def _assemble(clauses: list[_Clause], extra_terms: list[str]) -> str:
    sentences: list[list[str]] = []
    last = None
    for clause in clauses:
        if clause.sentence != last:
            sentences.append([])
            last = clause.sentence
        sentences[-1].append(clause.text)
    parts = [", ".join(group) + "." for group in sentences]
    if extra_terms:
        parts.append(", ".join(extra_terms) + ".")
    return " ".join(parts)


def _truncate(text: str, budget: int) -> str:
    """At most `budget` characters, cut after a sentence, else a clause, else a word."""
    if len(text) <= budget:
        return text
    head = text[:budget]
    for boundary in (". ", "; ", ", ", " "):
        cut = head.rfind(boundary)
        if cut > budget // 2:
            return head[: cut + 1].rstrip(" ,;")
    return head
