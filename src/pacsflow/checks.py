"""`pacsflow check`: the settings a run would use (config, ledger), then one line per server or modality:
reachable, version, login, or the exact reason not."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pacsflow.config import Settings
from pacsflow.dimse import echo
from pacsflow.errors import NoLedger, PacsflowError
from pacsflow.orthanc import Orthanc
from pacsflow.wording import plural


def check_server(settings: Settings, spec: str) -> tuple[str, bool]:
    config = settings.server(spec)
    try:
        with Orthanc(config, pool_size=1, retries=0) as client:
            caps = client.capabilities()
            stats = client.statistics()
    except PacsflowError as exc:  # a bad CA bundle too: the other targets are still checked
        return f"server   {config.display}: FAILED: {exc}", False
    login = (
        "token accepted"
        if config.token
        else f"login OK as {config.user!r}"
        if config.user
        else "no login needed"
    )
    features = [name for name, present in (("labels", caps.labels), ("C-GET", caps.c_get)) if present]
    return (
        f"server   {config.display}: OK, Orthanc {caps.version} (API {caps.api_version}), {login}, "
        f"{_count(stats.get('CountStudies'), 'study')} / {_count(stats.get('CountInstances'), 'instance')}"
        + (f", {', '.join(features)}" if features else ""),
        True,
    )


def _count(value: object, word: str) -> str:
    """A count the server reported, in words; '?' when it did not."""
    return plural(value, word) if isinstance(value, int) else f"? {word}s"


def check_modality(settings: Settings, spec: str) -> tuple[str, bool]:
    modality = settings.modality(spec)
    try:
        millis = echo(modality, settings.aet, timeout=10.0)
    except PacsflowError as exc:
        return f"modality {modality.display}: FAILED: {exc}", False
    return f"modality {modality.display}: OK, C-ECHO in {millis:.0f} ms as {settings.aet}", True


def check_ledger(settings: Settings) -> tuple[str, bool]:
    """Whether the ledger runs would use opens (without creating it), and how many runs it holds."""
    from pacsflow.ledger import Ledger
    from pacsflow.ledger.database import safe_url

    shown = safe_url(settings.ledger)
    try:
        ledger = Ledger(settings.ledger, create=False)
    except NoLedger:
        problem = _cannot_create(settings.ledger)
        if problem:
            return f"ledger   {shown}: FAILED: cannot create it: {problem}", False
        return f"ledger   {shown}: OK, not created yet (the first run creates it)", True
    except PacsflowError as exc:
        return f"ledger   {shown}: FAILED: {exc}", False
    try:
        count = len(ledger.runs(1_000_000))
    finally:
        ledger.close()
    return f"ledger   {shown}: OK, {count} run{'' if count == 1 else 's'}", True


def _cannot_create(url: str) -> str | None:
    """Why the first run could not create the SQLite ledger at URL, or None: its nearest existing
    folder must be a folder this process can write in."""
    path = Path(url.removeprefix("sqlite:///")).parent
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a folder"
    try:  # a folder made and removed at once: permissions alone do not tell (root, /proc, read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".pacsflow-check-", dir=path))
    except OSError as exc:
        return f"cannot write in {path}: {exc.strerror}"
    return None


def check_targets(settings: Settings, targets: list[str]) -> tuple[list[str], bool]:
    """Check the named targets, or the ledger and everything configured when none are named. The
    settings themselves (windows, rates, durations, names) were checked when they were loaded."""
    lines, all_ok = [], True
    if not targets:
        config = settings.config_path or "no config file (./pacsflow.toml, $PACSFLOW_CONFIG, -c)"
        lines.append(f"config   {config}: OK")
        line, all_ok = check_ledger(settings)
        lines.append(line)
        targets = list(settings.servers) + list(settings.modalities)
        if not targets:
            lines.append("nothing configured: add [servers.NAME] or [modalities.NAME] to pacsflow.toml")
            return lines, False
    for spec in targets:
        line, ok = (
            check_modality(settings, spec) if settings.is_modality(spec) else check_server(settings, spec)
        )
        lines.append(line)
        all_ok = all_ok and ok
    return lines, all_ok
