"""Wording shared by the validation messages: JSON type names and "did you mean" suggestions."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any


def describe(value: Any) -> str:
    """A value's JSON type as a person reads it: 'a string', 'a number (42)', 'null'..."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return "an object"


_SHOWN_CHARS = 40
_SHOWN_WORDS = 10


def shown(text: Any) -> str:
    """A value from the file, cut short for a message (a key or a role may be a megabyte long)."""
    text = str(text)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def quoted(words: Iterable[str]) -> str:
    words = list(words)
    listed = ", ".join(f'"{shown(word)}"' for word in words[:_SHOWN_WORDS])
    return listed if len(words) <= _SHOWN_WORDS else f"{listed} and {len(words) - _SHOWN_WORDS} more"


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): typos, one swap of neighbours counts 1."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = ca != cb
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def closest(word: str, vocabulary: frozenset[str]) -> str | None:
    """The word of `vocabulary` that `word` is most likely a typo of, or None when none is close.

    Close means: the same ignoring case, or one edit away (two for words of 7+ letters), counting a
    swap of two neighbouring letters as one edit ("lable" -> "label", "promt" -> "prompt").
    """
    if word in vocabulary or len(word) > _SHOWN_CHARS:  # the vocabulary's words are short
        return None
    return _closest(word, vocabulary)


@lru_cache(maxsize=4096)
def _closest(word: str, vocabulary: frozenset[str]) -> str | None:
    lowered = word.lower()
    best: tuple[int, str] | None = None
    for candidate in sorted(vocabulary):
        distance = _edit_distance(lowered, candidate.lower())
        if distance <= (2 if len(candidate) >= 7 else 1) and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def did_you_mean(word: str, vocabulary: frozenset[str]) -> str:
    """' (did you mean "x"?)' when `word` looks like a typo of a word of `vocabulary`, else ''."""
    suggestion = closest(word, vocabulary)
    return f' (did you mean "{suggestion}"?)' if suggestion else ""
