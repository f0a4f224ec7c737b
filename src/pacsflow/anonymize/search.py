"""Looking for identifying values in a file's raw bytes, as UTF-8 and as its own character set writes them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def encodings_of(ds: Any) -> list[str]:
    """Python codecs for the file's SpecificCharacterSet, UTF-8 always among them (a value may have been
    written by a tool that ignored the declared set)."""
    return encodings_for(ds.get("SpecificCharacterSet", ""))


def encodings_for(declared: str | list[str]) -> list[str]:
    """Python codecs for a SpecificCharacterSet value (one term or several), UTF-8 always among them."""
    from pydicom.charset import convert_encodings

    declared = declared or "ISO_IR 6"
    try:
        found = convert_encodings(declared)
    except (LookupError, ValueError, TypeError):
        found = []
    return ["utf-8", *(codec for codec in found if codec.lower().replace("-", "") not in ("utf8", "utf_8"))]


def found_in(data: bytes, values: Iterable[str], encodings: list[str]) -> str | None:
    """The first of VALUES present in DATA in any of ENCODINGS, whatever the case of its ASCII letters
    ("SMITHSON" for Smithson), or None. Stateful encodings (ISO 2022 escapes) are not found reliably in
    bytes: the verifier searches the decoded text of such files too."""
    lowered = data.lower()
    for value in values:
        for encoding in encodings:
            try:
                needle = value.encode(encoding)
            except (UnicodeEncodeError, LookupError):
                continue
            if needle and needle.lower() in lowered:
                return value
    return None
