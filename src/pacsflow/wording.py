"""Counts in words for people: `plural(1, "study")` is "1 study", `plural(2, "study")` "2 studies".

One helper for every line that prints a count, so that no line says "1 archives" or "1 studies were".
Imports nothing: the CLI, the engine and the operations all use it.
"""

from __future__ import annotations

_SAME = frozenset({"series"})  # words whose plural is the word itself


def plural_of(word: str) -> str:
    """WORD's plural by the regular English rules: study -> studies, batch -> batches, file -> files."""
    if word in _SAME:
        return word
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def singular_of(word: str) -> str:
    """WORD's singular, for names kept in the plural (an operation's unit, "files"): files -> file."""
    if word in _SAME or not word.endswith("s"):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    return word[:-1]


def plural(count: int, word: str, many: str | None = None) -> str:
    """COUNT and WORD, the word in the plural unless COUNT is 1 (MANY for an irregular plural)."""
    return f"{count} {word if count == 1 else many or plural_of(word)}"


def was_were(count: int) -> str:
    """The verb after a count: "1 study was", "2 studies were"."""
    return "was" if count == 1 else "were"
