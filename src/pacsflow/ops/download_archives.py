"""The ZIPs a download builds: entries appended as instances arrive, entries of the archive an earlier
run wrote reused instead of fetched again (and kept, even when the server no longer has them), and
each archive closed only when every entry is in it."""

from __future__ import annotations

import logging
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pacsflow.errors import BadInput
from pacsflow.layout import patient_zip_pattern
from pacsflow.zipappend import ZipBuilder, part_of

log = logging.getLogger("pacsflow")


@dataclass
class Earlier:
    """An archive an earlier run finished: where it is and the size of each entry."""

    path: Path
    sizes: dict[str, int]

    def read(self, name: str) -> bytes | None:
        """Entry NAME, its CRC checked as zipfile reads it; None when it is damaged or unreadable."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(name)
        except (OSError, KeyError, zipfile.BadZipFile):
            return None


def series_folder(name: str) -> str:
    """The series an entry belongs to: its name without the file (Patient/Study/Series)."""
    return name.rsplit("/", 1)[0]


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

    def latest_of(self, folder: Path, patient: str) -> Earlier | None:
        """PATIENT's ZIP in FOLDER with the most series, as an earlier run left it."""
        assert self.delimiter is not None
        return _readable(self._patient_zips(folder, patient)[:1])

    def _patient_zips(self, folder: Path, patient: str) -> list[Path]:
        """PATIENT's ZIPs in FOLDER, the one with the most series first."""
        assert self.delimiter is not None
        pattern = patient_zip_pattern(patient, self.delimiter)
        found = [(int(m[1]), p) for p in folder.glob("*.zip") if (m := pattern.fullmatch(p.name))]
        return [path for _, path in sorted(found, reverse=True)]

    def _find_earlier(self, final: Path, patient: str | None) -> Earlier | None:
        if final.exists():
            return _readable([final])
        if patient is not None and self.delimiter is not None:
            return _readable(self._patient_zips(final.parent, patient)[:1])
        return None

    def close(self, final: Path, names: Iterable[str], patient: str | None = None) -> tuple[str, int]:
        """Write FINAL with NAMES, entries appended by this run or copied from the archive it replaces,
        and every other entry of that archive too: a rerun never loses what the server no longer has.
        Returns (what happened, entries). Raises BadInput naming how many entries are missing (their
        instances failed: the part file stays for a retry), OSError."""
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
        kept = [name for name in (earlier.sizes if earlier is not None else ()) if name not in set(wanted)]
        every = wanted + kept
        if not appended and earlier is not None and earlier.path == final:
            self._remove_replaced(final, patient)  # a run killed between writing FINAL and this
            return "unchanged", len(every)
        damaged = []
        for name in every:
            if name not in appended:
                assert earlier is not None
                data = earlier.read(name)
                if data is None:
                    damaged.append(name)
                    continue
                builder.append(name, data)
        if damaged:
            # fetched again when the server has them; gone otherwise: say so, do not write a ZIP without
            raise BadInput(
                f"ZIP not written: {len(damaged)} entries of {earlier.path.name if earlier else ''} are "
                "damaged; fetch them again with `pacsflow retry RUN`, or remove that ZIP to start anew",
                where=final.name,
            )
        builder.close(every)
        self._remove_replaced(final, patient)
        if kept:
            log.info("%s: kept %d entries the server no longer lists", final.name, len(kept))
        return "written", len(every)

    def _remove_replaced(self, final: Path, patient: str | None) -> None:
        """Once FINAL is complete: PATIENT's other ZIPs (fewer or more series: the server changed)."""
        with self._lock:
            self._earlier.pop(final, None)
        if patient is None or self.delimiter is None:
            return
        for path in self._patient_zips(final.parent, patient):
            if path != final:
                path.unlink(missing_ok=True)


def _readable(paths: list[Path]) -> Earlier | None:
    for path in paths:
        try:
            with zipfile.ZipFile(path) as archive:
                return Earlier(path, {info.filename: info.file_size for info in archive.infolist()})
        except (OSError, zipfile.BadZipFile):
            return None
    return None
