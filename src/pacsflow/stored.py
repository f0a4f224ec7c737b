"""What Orthanc's answer to `POST /instances` means: stored, already stored, or refused (one rule)."""

from __future__ import annotations

from typing import Any

from pacsflow.errors import BadInput

STORED, ALREADY_STORED = "Success", "AlreadyStored"


def check_stored(answer: dict[str, Any], *, where: str | None = None, expected_id: str | None = None) -> bool:
    """True when the server stored the instance now, False when it held it already.

    Raises BadInput when it refused it (Orthanc 1.10 answers a Lua `ReceivedInstanceFilter` rejection
    with HTTP 200 and Status `FilteredOut`, and still names the ID the instance would have had) or
    stored it under another ID than the one expected. WHERE names the file or instance: it goes into
    the error's `where` (and IDs into `detail`), which logs show only with --log-phi.
    """
    status = answer.get("Status")
    if status not in (STORED, ALREADY_STORED):
        raise BadInput(f"refused by the server ({status or 'no status'})", where=where)
    if expected_id is not None and answer.get("ID") != expected_id:
        raise BadInput(
            "stored under another ID than expected",
            where=where,
            detail=f"{answer.get('ID')} != {expected_id}",
        )
    return status == STORED
