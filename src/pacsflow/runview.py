"""`pacsflow runs` and `pacsflow run show`: runs, their parameters (secrets hidden), counts, timing and
failed items, as a view that the text lines and `--json` are both made from, so they never disagree.

What the view holds follows README's patient-data rule: `runs` names no file, patient or study (ids,
operations, statuses, counts, times); `run show` is an operator's look at one run and names its failed
items as people know them (a file's path, an archive's member, a study's Orthanc ID, a roster line) with
their errors whole, as the ledger keeps them. Passwords and tokens are never in either.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pacsflow.config import redact_url
from pacsflow.events import item_label
from pacsflow.ledger import DONE, FAILED, PENDING, RUNNING, SKIPPED, Item, Ledger, RunInfo
from pacsflow.ledger.queries import INTERRUPTED
from pacsflow.wording import plural

_SECRET_KEYS = ("password", "token", "secret")
#: the item statuses, in the order people read them; every one is a key of a view's counts
STATUSES = (DONE, SKIPPED, FAILED, PENDING, RUNNING)
#: what to do about a run whose process is gone
_NEXT = " (its process is gone; continue it with `pacsflow resume {}`)"


def redact_params(value: Any) -> Any:
    """Parameters as safe to print: URLs without passwords, secret-named keys hidden."""
    if isinstance(value, dict):
        return {
            key: "***" if any(word in key.lower() for word in _SECRET_KEYS) else redact_params(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_params(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def _when(timestamp: float | None) -> str | None:
    """A ledger time as ISO 8601 with this machine's UTC offset (a program reads it unambiguously)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def run_record(run: RunInfo, status: str | None = None) -> dict[str, Any]:
    """One run for `runs --json`: the same keys for every run, and nothing that names a patient.

    STATUS is the status to show (Ledger.shown_status: 'interrupted' for a run whose process is gone).
    """
    return {
        "id": run.id,
        "operation": run.operation,
        "status": status or run.status,
        "created_at": _when(run.created_at),
        "updated_at": _when(run.updated_at),
        "finished_at": _when(run.finished_at),
        "items": run.total,
        "counts": {state: run.counts.get(state, 0) for state in STATUSES},
        "bytes": run.bytes,
    }


def item_name(item: Item) -> str:
    """ITEM as people know it (its key is the ledger's own spelling: `m//data/x.zip!a/1.dcm`): a file's
    path, an archive member as `MEMBER in ARCHIVE`, a study or instance by its Orthanc ID, a roster
    row by its ID. May name a patient: for `run show`, never for logs."""
    payload, key, kind = item.payload, item.key, item.kind
    if kind == "member" and "archive" in payload:
        return f"{payload.get('name', '')} in {payload['archive']}"
    if kind in ("file", "folder"):
        # a roster's files are keyed f/PATH; an upload's by their absolute path itself
        return str(payload.get("path") or (key[2:] if key.startswith("f/") else key))
    if kind in ("row", "verify") and "row" in payload:
        return str(payload["row"])
    if kind == "commit":
        return ", ".join(map(str, payload.get("ids", [])))
    if kind in ("study", "verify") and "study" in payload:
        return f"study {payload['study']}"
    if kind in ("peer-store", "dicom-store") and "ids" in payload:
        study = key.split("/")[1] if key.count("/") >= 2 else "?"
        return f"{plural(len(payload['ids']), 'instance')} of study {study}"
    if kind == "instance" and "id" in payload:
        return str(payload.get("path") or f"instance {payload['id']}")
    if kind == "forward" and "id" in payload:
        return f"{payload['id']} to {redact_url(str(payload.get('to', '')))}"
    if kind == "delete" and "id" in payload:
        return f"{payload['id']} from the source"
    if kind == "deletion" and "ids" in payload:
        ids = payload["ids"]
        return f"study {ids[0]}" if len(ids) == 1 else f"{len(ids)} studies: {ids[0]} and {len(ids) - 1} more"
    return key


def printable(text: str | None) -> str | None:
    """TEXT with the undecodable bytes of a file name (kept by Python as lone surrogates, which no
    terminal or JSON encoder takes) written as escapes: `broken-\\udce9.dcm`."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def run_view(
    ledger: Ledger, run_ref: str, *, failed: bool = False, limit: int = 50, items: bool = False
) -> dict[str, Any]:
    """One run for `run show` (text or --json): `run_record`'s keys, its parameters (secrets hidden),
    elapsed seconds and error of its last process, with FAILED up to LIMIT failed items (else
    `failed_items` is None), and with ITEMS its first LIMIT items of every status with their notes and
    results, the run's record of what each did (else `listed_items` is None). Raises ConfigError for an
    unknown or ambiguous RUN_REF."""
    run = ledger.run(run_ref)
    summary = run.summary or {}
    view = run_record(run, ledger.shown_status(run))
    view["params"] = redact_params(run.params)
    view["elapsed"] = summary.get("elapsed")
    view["error"] = summary.get("error")
    view["failed_items"] = None
    if failed:
        first = ledger.first_item_id(run.id) or 1
        view["failed_items"] = [
            {
                "number": item.id - first + 1,
                "kind": item.kind,
                "label": item_label(item.kind, item.id - first + 1, item.key),
                "name": printable(item_name(item)),
                "attempts": item.attempts,
                "error": printable(item.last_error),
            }
            for item in ledger.items(run.id, status=FAILED, limit=limit)
        ]
    view["listed_items"] = None
    if items:
        first = ledger.first_item_id(run.id) or 1
        view["listed_items"] = [
            {
                "number": item.id - first + 1,
                "kind": item.kind,
                "label": item_label(item.kind, item.id - first + 1, item.key),
                "name": printable(item_name(item)),
                "status": item.status,
                "note": printable(item.last_error),
                "result": item.result,
            }
            for item in ledger.items(run.id, limit=limit)
        ]
    return view


def render_view(view: dict[str, Any]) -> list[str]:
    """`run_view`'s VIEW as the lines of `pacsflow run show`."""
    counts = ", ".join(f"{n} {state}" for state, n in view["counts"].items() if n)
    lines = [
        f"run        {view['id']}",
        f"operation  {view['operation']}",
        f"status     {view['status']}" + (_NEXT if view["status"] == INTERRUPTED else "").format(view["id"]),
        f"created    {_local(view['created_at'])}",
    ]
    if view["finished_at"]:
        lines.append(f"finished   {_local(view['finished_at'])}")
    lines += [
        f"params     {printable(json.dumps(view['params'], ensure_ascii=False))}",
        f"items      {counts or 'none'}",
        f"bytes      {view['bytes'] / 1e6:.1f} MB",
    ]
    if view["error"]:
        lines.append(f"error      {view['error']}")
    failures = view["failed_items"]
    if failures is not None:
        shown = view["counts"][FAILED]
        lines.append(f"failed items ({shown}):" if failures else "no failed items")
        lines.extend(f"  {one['label']} {one['name']}: {one['error']}" for one in failures)
        if len(failures) < shown:
            lines.append(f"  ... and {shown - len(failures)} more (--limit)")
    listed = view.get("listed_items")
    if listed is not None:
        lines.append(f"items ({len(listed)} of {view['items']}):" if listed else "no items")
        for one in listed:
            note = f" ({one['note']})" if one["note"] else ""
            lines.append(f"  {one['label']} {one['name']}: {one['status']}{note}")
            lines.extend(f"    {line}" for line in result_lines(one["result"]))
        if len(listed) < view["items"]:
            lines.append(f"  ... and {view['items'] - len(listed)} more (--limit)")
    return lines


def result_lines(result: dict[str, Any] | None) -> list[str]:
    """An item's result as lines: `name: key=value ...` for each record of a list (a deletion's studies),
    and its single values together on one line."""
    lines: list[str] = []
    single: list[str] = []
    for key, value in (result or {}).items():
        name = key.replace("_", " ")
        if isinstance(value, list) and value and all(isinstance(one, dict) for one in value):
            lines.extend(f"{name}: {_pairs(one)}" for one in value)
        elif isinstance(value, list):
            lines.append(f"{name}: {', '.join(map(str, value))}")
        elif isinstance(value, dict):
            lines.append(f"{name}: {_pairs(value)}")
        else:
            single.append(f"{key}={value}")
    return ([" ".join(single)] if single else []) + [printable(line) or "" for line in lines]


def _pairs(record: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in record.items())


def _local(iso: str) -> str:
    """An ISO time of the view as the text shows it: local time to the second, without the offset."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def show_run(ledger: Ledger, run_ref: str, *, failed: bool, limit: int) -> list[str]:
    """The lines of `pacsflow run show RUN_REF` (see run_view)."""
    return render_view(run_view(ledger, run_ref, failed=failed, limit=limit))
