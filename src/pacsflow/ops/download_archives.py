"""The ZIPs a download builds: entries appended as instances arrive, entries of the archive an earlier
run wrote reused instead of fetched again, and each archive closed only when every entry is in it."""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pacsflow.errors import BadInput
from pacsflow.layout import patient_zip_pattern
from pacsflow.zipappend import ZipBuilder, part_of


@dataclass
class Earlier:
    """An archive an earlier run finished: where it is and the size of each entry."""

    path: Path
    sizes: dict[str, int]


class Archives:
    """Every archive of one download run, by its final path."""

    def __init__(self, delimiter: str | None = None) -> None:
        self.delimiter = delimiter  # per-patient ZIPs: <patient><delimiter><series>.zip
        self._lock = threading.Lock()
        self._builders: dict[Path, ZipBuilder] = {}
        self._earlier: dict[Path, Earlier | None] = {}

    def builder(self, final: Path) -> ZipBuilder:
        with self._lock:
            if final not in self._builders:
                self._builders[final] = ZipBuilder(final)
            return self._builders[final]

    def earlier(self, final: Path, patient: str | None = None) -> Earlier | None:
        """The finished archive FINAL replaces: FINAL itself, or (per-patient ZIPs) PATIENT's ZIP with
        the most series; None when there is none, or it cannot be read (it is then written anew)."""
        with self._lock:
            if final not in self._earlier:
                self._earlier[final] = self._find_earlier(final, patient)
            return self._earlier[final]

    def _find_earlier(self, final: Path, patient: str | None) -> Earlier | None:
        candidates = [final] if final.exists() else []
        if not candidates and patient is not None and self.delimiter is not None:
            pattern = patient_zip_pattern(patient, self.delimiter)
            found = [(int(m[1]), p) for p in final.parent.glob("*.zip") if (m := pattern.fullmatch(p.name))]
            candidates = [path for _, path in sorted(found, reverse=True)[:1]]
        for path in candidates:
            try:
                with zipfile.ZipFile(path) as archive:
                    return Earlier(path, {info.filename: info.file_size for info in archive.infolist()})
            except (OSError, zipfile.BadZipFile):
                return None
        return None

    def read_earlier(self, earlier: Earlier, name: str) -> bytes:
        """Entry NAME of an earlier archive (its CRC checked by zipfile as it reads)."""
        with zipfile.ZipFile(earlier.path) as archive:
            return archive.read(name)

    def close(self, final: Path, names: Iterable[str], patient: str | None = None) -> tuple[str, int]:
        """Write FINAL with exactly NAMES: entries appended by this run, the rest copied from the archive
        it replaces. Returns (what happened, entries). Raises BadInput naming how many entries are
        missing (their instances failed: the part file stays for a retry), OSError."""
        wanted = list(dict.fromkeys(names))
        builder = self.builder(final)
        earlier = self.earlier(final, patient)
        appended = builder.names() if part_of(final).exists() else set()
        reusable = set(earlier.sizes) if earlier is not None else set()
        missing = [name for name in wanted if name not in appended and name not in reusable]
        if missing:
            raise BadInput(
                f"ZIP not written: {len(missing)} of {len(wanted)} instances are missing (see the failed "
                "items; `pacsflow retry RUN` fetches them again)",
                where=final.name,
            )
        if (
            not appended
            and earlier is not None
            and earlier.path == final
            and set(earlier.sizes) == set(wanted)
        ):
            return "unchanged", len(wanted)
        if earlier is not None:
            with zipfile.ZipFile(earlier.path) as archive:
                for name in wanted:
                    if name not in appended:
                        builder.append(name, archive.read(name))
        builder.close(wanted)
        self._remove_replaced(final, patient)
        return "written", len(wanted)

    def _remove_replaced(self, final: Path, patient: str | None) -> None:
        """Once FINAL is complete: PATIENT's other ZIPs (fewer or more series: the server changed)."""
        with self._lock:
            self._earlier.pop(final, None)
        if patient is None or self.delimiter is None:
            return
        pattern = patient_zip_pattern(patient, self.delimiter)
        for path in final.parent.glob("*.zip"):
            if path != final and pattern.fullmatch(path.name):
                path.unlink(missing_ok=True)
