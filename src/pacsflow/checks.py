"""`pacsflow check`: one line per server or modality: reachable, version, login, or the exact reason not."""

from __future__ import annotations

from pacsflow.config import Settings
from pacsflow.dimse import echo
from pacsflow.errors import PacsflowError
from pacsflow.orthanc import Orthanc


def check_server(settings: Settings, spec: str) -> tuple[str, bool]:
    config = settings.server(spec)
    with Orthanc(config, pool_size=1, retries=0) as client:
        try:
            caps = client.capabilities()
            stats = client.statistics()
        except PacsflowError as exc:
            return f"server   {config.display}: FAILED: {exc}", False
    login = "login OK" if config.user or config.token else "no login"
    features = [name for name, present in (("labels", caps.labels), ("C-GET", caps.c_get)) if present]
    return (
        f"server   {config.display}: OK, Orthanc {caps.version} (API {caps.api_version}), {login}, "
        f"{stats.get('CountStudies', '?')} studies / {stats.get('CountInstances', '?')} instances"
        + (f", {', '.join(features)}" if features else ""),
        True,
    )


def check_modality(settings: Settings, spec: str) -> tuple[str, bool]:
    modality = settings.modality(spec)
    try:
        millis = echo(modality, settings.aet, timeout=10.0)
    except PacsflowError as exc:
        return f"modality {modality.display}: FAILED: {exc}", False
    return f"modality {modality.display}: OK, C-ECHO in {millis:.0f} ms as {settings.aet}", True


def check_targets(settings: Settings, targets: list[str]) -> tuple[list[str], bool]:
    """Check the named targets, or everything configured when none are named."""
    if not targets:
        targets = list(settings.servers) + list(settings.modalities)
        if not targets:
            return ["nothing configured: add [servers.NAME] or [modalities.NAME] to pacsflow.toml"], False
    lines, all_ok = [], True
    for spec in targets:
        line, ok = (
            check_modality(settings, spec) if settings.is_modality(spec) else check_server(settings, spec)
        )
        lines.append(line)
        all_ok = all_ok and ok
    return lines, all_ok
