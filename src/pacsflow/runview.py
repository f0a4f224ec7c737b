"""`pacsflow run show`: a run's parameters (secrets hidden), counts, timing and failed items."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pacsflow.config import redact_url
from pacsflow.ledger import FAILED, Ledger

_SECRET_KEYS = ("password", "token", "secret")


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


def show_run(ledger: Ledger, run_ref: str, *, failed: bool, limit: int) -> list[str]:
    run = ledger.run(run_ref)
    created = datetime.fromtimestamp(run.created_at).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"run        {run.id}",
        f"operation  {run.operation}",
        f"status     {run.status}",
        f"created    {created}",
        f"params     {json.dumps(redact_params(run.params), ensure_ascii=False)}",
        "items      " + (", ".join(f"{n} {s}" for s, n in sorted(run.counts.items())) or "none"),
        f"bytes      {run.bytes / 1e6:.1f} MB",
    ]
    if run.summary and run.summary.get("error"):
        lines.append(f"error      {run.summary['error']}")
    if failed:
        failures = ledger.items(run.id, status=FAILED, limit=limit)
        lines.append(f"failed items ({run.counts.get(FAILED, 0)}):" if failures else "no failed items")
        lines.extend(f"  #{item.id} {item.kind} {item.key}: {item.last_error}" for item in failures)
    return lines
