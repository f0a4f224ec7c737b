"""Shifting DA and DT values by whole days, keeping each value's precision, time and UTC offset."""

from __future__ import annotations

import datetime as dt
import re

# DT: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]; only the date part moves, the rest is kept as written
_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(.*)", re.DOTALL)
_OFFSET_OR_TIME = re.compile(r"[\d.]*([+-]\d{4})?")


def shift_date(text: str, days: int) -> str:
    """A DA or DT value moved by DAYS; an empty or unparseable value comes back empty (never kept as is,
    since a value we cannot read is one we cannot vouch for)."""
    value = text.strip()
    if not value:
        return ""
    if "-" in value[:9] and len(value) > 8 and not re.fullmatch(r"\d{8,}[\d.]*[+-]\d{4}", value):
        return ""  # a range (a query value, never in an instance): not a date we can move safely
    match = _DT.fullmatch(value)
    if not match or not _OFFSET_OR_TIME.fullmatch(match[4]):
        return ""
    year, month, day, rest = match[1], match[2], match[3], match[4]
    try:
        moved = dt.date(int(year), int(month or 1), int(day or 1)) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    if moved.year < 1:
        return ""
    text_out = f"{moved.year:04d}"
    if month:
        text_out += f"{moved.month:02d}"
    if day:
        text_out += f"{moved.day:02d}"
    return text_out + rest


def shift_values(value: object, days: int) -> object:
    """A DA/DT element's value (one text or several) shifted."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [shift_date(str(item), days) for item in value]  # type: ignore[union-attr]
    return shift_date(str(value), days)
