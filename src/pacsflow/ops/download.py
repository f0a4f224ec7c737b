"""download: fetch studies from an Orthanc server into a folder tree, one ZIP or one ZIP per patient,
instance by instance (Orthanc's own archives are deflated on the server and ten times slower)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pacsflow.errors import BadInput, ConfigError, NotFound, PacsflowError, TransientError
from pacsflow.layout import DEFAULT_DELIMITER, patient_zip_name
from pacsflow.ledger import DONE, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.download_archives import Archives, series_folder
from pacsflow.ops.download_listing import StudyListing, list_study
from pacsflow.ops.params import DownloadParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.selection import Selection, first_look, resolve
from pacsflow.wording import plural

log = logging.getLogger("pacsflow")
STUDY, PATIENT, INSTANCE, CHECK, ARCHIVE = "study", "patient", "instance", "check", "archive"
ALREADY = "already downloaded"
#: phases: list what to fetch, fetch it, check each study, close the archives
_FETCH, _CHECK, _CLOSE = 1, 2, 3


class OutputFull(PacsflowError):
    """The output's disk is full: every further item would fail the same way, so the run stops."""

    fatal = True


@register
class Download(Operation):
    """Studies (or patients, for per-patient ZIPs) list their instances; one item fetches each; one item
    per study checks its series' counts; one item per archive closes it."""

    name = "download"
    unit = "items"
    Params = DownloadParams
    p: DownloadParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | DownloadParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a server that is not configured."""
        super().__init__(settings, params)
        self.source = connect(settings, self.p.source, self.p.workers or settings.workers)
        self.target = Path(self.p.out or self.p.zip or self.p.per_patient_zip or ".")
        #: the folder files or archives go into
        self.folder = self.target.parent if self.p.zip else self.target
        self.delimiter = self.p.delimiter or DEFAULT_DELIMITER
        self.archives = Archives(self.delimiter if self.p.per_patient_zip else None)
        #: folders this process made or found (a folder removed meanwhile fails its file's item, retried)
        self._folders: set[Path] = set()
        #: the studies the selectors named, looked up at the start (None: plan looks)
        self._chosen: list[str] | None = None
        #: with --anonymize: each instance de-identified in memory before it is written
        self._deid = None
        if self.p.anonymize:
            from pacsflow.ops.deidentifying import Deidentifying, settle

            self._deid = Deidentifying(self, settle(self))

    # -- before the run -------------------------------------------------------------------------

    def preflight(self) -> None:
        """Raises ConfigError (the output is of the wrong kind or not writable, a selector names no study
        on the server), PreflightError or Unauthorized (the server)."""
        if self.p.zip:
            if self.target.is_dir():
                raise ConfigError(f"--zip {self.target} is a folder; name the ZIP file to write")
        elif self.target.exists() and not self.target.is_dir():
            raise ConfigError(f"{self.target} exists and is not a folder")
        preflight_server(self.source)
        self._chosen = first_look(self.source, self.p)
        if self._chosen is not None:
            self.remember("matched", len(self._chosen))
        self._writable()  # after the checks: a refused command leaves nothing

    def _writable(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".pacsflow-probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write into {self.folder} ({exc.strerror})") from None

    def plan(self) -> Iterable[PlannedItem]:
        studies = self._chosen
        if studies is None:  # a query, every study, or a resume planning again
            studies = resolve(self.source, Selection.of(self.p), require_match=False)
            if not studies and (self.p.query or self.p.labels):
                log.warning("the selection matches no study on %s", self.source.display)
        if self.p.per_patient_zip:
            for patient, of_patient in self._by_patient(studies).items():
                # a scope per patient: its ZIP is closed as soon as its own files are in (see ledger scopes)
                scope = f"p/{patient}"
                yield PlannedItem(PATIENT, scope, {"patient": patient, "studies": of_patient}, scope=scope)
            return
        for study in studies:
            # a scope per study: its files are fetched, and checked, while other studies are listed
            yield PlannedItem(STUDY, f"s/{study}", {"study": study}, scope=f"s/{study}")
        if self.p.zip:
            yield PlannedItem(ARCHIVE, "zip", {"zip": str(self.target)}, phase=_CLOSE)

    def _by_patient(self, studies: list[str]) -> dict[str, list[str]]:
        """STUDIES grouped by their Orthanc patient, in the order given (a study gone meanwhile is left
        out: the rest goes on)."""

        def parent(study: str) -> str | None:
            try:
                return str(self.source.resource("studies", study)["ParentPatient"])
            except NotFound:
                return None

        grouped: dict[str, list[str]] = {}
        with ThreadPoolExecutor(max(1, self.p.workers or self.settings.workers)) as pool:
            for study, patient in zip(studies, pool.map(parent, studies), strict=True):
                if patient is not None:
                    grouped.setdefault(patient, []).append(study)
        return grouped

    # -- items ----------------------------------------------------------------------------------

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (the study or instance no longer on the server, a count that does not match),
        TransientError (a download cut short), OutputFull, or what the server's answers raise."""
        if item.kind == STUDY:
            return self._plan_study(item.payload["study"], item.scope)
        if item.kind == PATIENT:
            return self._plan_patient(item.payload, item.scope)
        try:
            if item.kind == CHECK:
                return self._check(item.payload)
            if item.kind == ARCHIVE:
                return self._close(item)
            return self._instance(item.payload)
        except OSError as exc:  # the output, not the server (its faults are PacsflowErrors)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutputFull(
                    f"{self.folder}: no space left; the run stops (resume it once there is room)"
                ) from None
            where = item.payload.get("name") or item.payload.get("zip") or item.key
            raise BadInput(f"cannot write ({exc.strerror})", where=str(where)) from None

    def _listing(self, study: str) -> StudyListing:
        return list_study(self.source, study, self._deid.get() if self._deid is not None else None)

    def _plan_study(self, study: str, scope: str | None) -> Outcome:
        listing = self._listing(study)
        archive = str(self.target) if self.p.zip else None
        children = [self._instance_item(entry, archive, scope=scope) for entry in listing.instances]
        children.append(self._check_item(study, listing, archive, scope=scope))
        return Outcome(
            result={
                "instances": len(listing.instances),
                "series": [one.as_result() for one in listing.series],
            },
            children=children,
        )

    def _plan_patient(self, payload: Mapping[str, Any], scope: str | None) -> Outcome:
        """A patient's studies listed; their instances go into `<patient><delimiter><series>.zip`."""
        listings = []
        for study in payload["studies"]:
            try:
                listings.append(self._listing(study))
            except BadInput:
                log.warning(
                    "a study is no longer on %s; its patient's ZIP is made without it", self.source.display
                )
        if not listings:
            raise BadInput(
                f"none of the patient's studies is on {self.source.display} any more",
                where=payload["patient"],
            )
        folder = listings[0].patient_folder
        planned = {entry.name for listing in listings for entry in listing.instances}
        # the ZIP keeps what the patient's earlier ZIP holds that the server no longer lists: its
        # series count counts those series too
        earlier = self.archives.latest_of(self.target, folder)
        kept = [name for name in (earlier.sizes if earlier is not None else ()) if name not in planned]
        planned_series = {one.id for listing in listings for one in listing.series}
        planned_folders = {series_folder(name) for name in planned}
        series = len(planned_series) + len({series_folder(name) for name in kept} - planned_folders)
        final = self.target / patient_zip_name(folder, self.delimiter, series)
        children: list[PlannedItem] = []
        names: list[str] = []
        for listing in listings:
            children += [self._instance_item(entry, str(final), folder, scope) for entry in listing.instances]
            children.append(self._check_item(listing.study, listing, str(final), folder, scope))
            names += [entry.name for entry in listing.instances]
        children.append(
            PlannedItem(
                ARCHIVE,
                f"zip/{payload['patient']}",
                {"zip": str(final), "patient": folder, "names": names},
                phase=_CLOSE,
                scope=scope,
            )
        )
        result = {
            "instances": len(names),
            "zip": final.name,
            "series": [one.as_result() for listing in listings for one in listing.series],
        }
        return Outcome(result=result, children=children)

    @staticmethod
    def _instance_item(
        entry: Any, archive: str | None, patient: str | None = None, scope: str | None = None
    ) -> PlannedItem:
        payload = {"id": entry.id, "name": entry.name, "series": entry.series, "size": entry.size}
        if archive is not None:
            payload["zip"] = archive
        if patient is not None:
            payload["patient"] = patient
        return PlannedItem(INSTANCE, f"i/{entry.id}", payload, phase=_FETCH, scope=scope)

    @staticmethod
    def _check_item(
        study: str,
        listing: StudyListing,
        archive: str | None,
        patient: str | None = None,
        scope: str | None = None,
    ) -> PlannedItem:
        series = [{**one.as_result(), "names": one.names, "sizes": one.sizes} for one in listing.series]
        payload: dict[str, Any] = {"study": study, "series": series, "zip": archive, "patient": patient}
        return PlannedItem(CHECK, f"c/{study}", payload, phase=_CHECK, scope=scope)

    # -- one instance ---------------------------------------------------------------------------

    def _instance(self, payload: Mapping[str, Any]) -> Outcome:
        instance = payload["id"]
        name = payload.get("name") or payload["path"]  # "path": runs made before ZIPs
        if payload.get("zip"):
            return self._into_archive(instance, name, Path(payload["zip"]), payload.get("patient"))
        target = self.folder / name
        if self._deid is not None:
            return self._fetch_deidentified(instance, target)
        return self._fetch(instance, target)

    def _into_archive(self, instance: str, name: str, final: Path, patient: str | None) -> Outcome:
        builder = self.archives.builder(final)
        if builder.holds(name):
            return Outcome(status=SKIPPED, note=ALREADY)
        earlier = self.archives.earlier(final, patient)
        if self._deid is not None:
            if earlier is not None and name in earlier.sizes and earlier.read(name) is not None:
                return Outcome(status=SKIPPED, note=ALREADY)
            data, nbytes, found = self._deidentified(instance)
        else:
            size, md5 = self._server_file(instance)
            if earlier is not None and earlier.sizes.get(name) == size:
                kept = earlier.read(name)  # None when damaged: fetched again
                if kept is not None and (
                    md5 is None or hashlib.md5(kept, usedforsecurity=False).hexdigest() == md5
                ):
                    return Outcome(status=SKIPPED, note=ALREADY)
            data = self._get(instance)
            _check_file(data, size, md5, instance)
            nbytes, found = len(data), None
        builder.append(name, data)
        return Outcome(nbytes=nbytes, result=found)

    def _fetch(self, instance: str, target: Path) -> Outcome:
        size, md5 = self._server_file(instance)
        if _same_file(target, size, md5):
            return Outcome(status=SKIPPED, note=ALREADY)
        if target.parent not in self._folders:  # one mkdir per folder, not per file
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)
        # A name of its own per attempt: after a lease takeover two workers may fetch the same instance,
        # and each must rename only a file it wrote whole.
        partial = target.with_name(f"{target.name}.{secrets.token_hex(6)}.part")
        digest = hashlib.md5(usedforsecurity=False)
        try:
            try:
                fh = open(partial, "xb")  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:  # its folder was removed since this process made it
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = open(partial, "xb")  # noqa: SIM115
            with fh:
                written = self.source.stream_instance_file(instance, _Hashing(fh, digest))
            _check_sizes(written, size, digest.hexdigest(), md5, instance)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return Outcome(nbytes=written)

    def _get(self, instance: str) -> bytes:
        try:
            return self.source.instance_file(instance)
        except NotFound:
            raise BadInput(f"instance is no longer on {self.source.display}", where=instance) from None

    def _server_file(self, instance: str) -> tuple[int, str | None]:
        """The size of the server's file and its MD5 (None where the server keeps none: Orthanc's
        StoreMD5ForAttachments is on by default)."""
        try:
            info = self.source.file_info(instance)
        except NotFound:
            raise BadInput(f"instance is no longer on {self.source.display}", where=instance) from None
        md5 = str(info.get("UncompressedMD5") or "").lower() or None
        return int(info["UncompressedSize"]), md5

    def _deidentified(self, instance: str) -> tuple[bytes, int, dict[str, Any]]:
        from pacsflow.ops.deidentifying import deidentify_checked

        assert self._deid is not None
        result = deidentify_checked(self._deid.get(), self._get(instance), where=instance)
        return result.data, len(result.data), {"anon": result.anon()}

    def _fetch_deidentified(self, instance: str, target: Path) -> Outcome:
        """Download, de-identify in memory, write (never in clear, not even as a temporary file)."""
        from pacsflow.dicomfiles import write_atomically

        if target.exists():
            return Outcome(status=SKIPPED, note=ALREADY)
        data, nbytes, found = self._deidentified(instance)
        write_atomically(target, data)
        return Outcome(nbytes=nbytes, result=found)

    # -- after the instances --------------------------------------------------------------------

    def _check(self, payload: Mapping[str, Any]) -> Outcome:
        """Each series of a study: the instances now on disk (or in its archive) against the count it
        should have: Orthanc's ExpectedNumberOfInstances where it knows one, else what it listed."""
        present_in = self._present(payload)
        problems = []
        counts = []
        for one in payload["series"]:
            if not payload.get("zip"):
                self._sweep(one["names"])
            present = sum(1 for name in one["names"] if present_in(name))
            expected = one["expected"] if one["expected"] is not None else one["listed"]
            counts.append({"id": one["id"], "present": present, "expected": expected})
            if present < expected:
                problems.append(f"{_series_label(one)}: {present} of {expected} instances")
            elif present > expected:  # the server holds more than the series' own tags announce
                problems.append(f"{_series_label(one)}: {present} instances, {expected} expected")
        if problems:
            raise BadInput("counts differ: " + "; ".join(problems), where=payload["study"])
        return Outcome(result={"series": counts})

    def _sweep(self, names: list[str]) -> None:
        """Temporary files an attempt killed mid-file left beside NAMES (every fetch of the study is over
        when its check runs, its scope's earlier phase: no worker is writing them). One listing per
        folder."""
        by_folder: dict[Path, set[str]] = {}
        for name in names:
            target = self.folder / name
            by_folder.setdefault(target.parent, set()).add(target.name)
        for folder, files in by_folder.items():
            try:
                listed = os.listdir(folder)
            except OSError:
                continue
            for entry in listed:
                if entry.endswith(".part") and entry.rsplit(".", 2)[0] in files:
                    (folder / entry).unlink(missing_ok=True)

    def _present(self, payload: Mapping[str, Any]) -> Any:
        """A test of whether a file of the study is there: on disk with the server's size (any size once
        de-identified), or in the archive being built or the one it replaces."""
        if not payload.get("zip"):
            sizes = {
                name: size
                for one in payload["series"]
                for name, size in zip(one["names"], one["sizes"], strict=True)
            }

            def on_disk(name: str) -> bool:
                try:
                    size = (self.folder / name).stat().st_size
                except OSError:
                    return False
                return self._deid is not None or size == sizes[name]

            return on_disk
        final = Path(payload["zip"])
        appended = self.archives.builder(final).names()
        earlier = self.archives.earlier(final, payload.get("patient"))
        kept = set(earlier.sizes) if earlier is not None else set()
        return lambda name: name in appended or name in kept

    def _close(self, item: Item) -> Outcome:
        payload = item.payload
        final = Path(payload["zip"])
        names = payload.get("names")
        if names is None:  # the one --zip archive: every instance of every study of the run
            unlisted = [
                one for one in self.ledger.items(item.run_id, kind=STUDY) if one.status not in (DONE, SKIPPED)
            ]
            if unlisted:
                raise BadInput(
                    f"ZIP not written: {plural(len(unlisted), 'study')} could not be listed (see the failed "
                    "items; `pacsflow retry RUN` tries them again)",
                    where=final.name,
                )
            names = [one.payload["name"] for one in self.ledger.items(item.run_id, kind=INSTANCE)]
        outcome, count = self.archives.close(final, names, payload.get("patient"))
        note = "unchanged" if outcome == "unchanged" else None
        return Outcome(
            status=SKIPPED if note else DONE, note=note, result={"zip": final.name, "entries": count}
        )

    def finish(self, run: RunInfo) -> list[str]:
        lines = [self._written_line(run)]
        failed_checks = [item for item in self.ledger.items(run.id, status="failed", kind=CHECK)]
        if failed_checks:
            lines.append(
                f"{plural(len(failed_checks), 'study')} with series whose instance count is not the "
                f"expected one: `pacsflow run show {run.id} --failed`"
            )
        if self._deid is not None:
            from pacsflow.ops.deidentifying import verified_lines, write_mapping

            added = write_mapping(self.ledger, run, (INSTANCE,), f"folder:{self.folder}")
            lines.append(f"de-identified on the way; {plural(added, 'new mapping row')}")
            lines += verified_lines(self.ledger, run, (INSTANCE,))
        return lines

    def _written_line(self, run: RunInfo) -> str:
        megabytes = f"{run.bytes / 1e6:.1f} MB downloaded in this run"
        if self.p.out:
            files = sum(1 for _ in self.folder.rglob("*.dcm"))
            return f"{plural(files, 'DICOM file')} under {self.folder}; {megabytes}"
        archives = self.ledger.items(run.id, kind=ARCHIVE)
        written = [item for item in archives if item.status in (DONE, SKIPPED)]
        where = self.target if self.p.zip else self.folder
        return f"{plural(len(written), 'ZIP')} of {len(archives)} complete in {where}; {megabytes}"

    def close(self) -> None:
        self.source.close()


class _Hashing:
    """A file that also feeds what is written into a digest (the MD5 is checked as the file arrives)."""

    def __init__(self, fh: Any, digest: Any) -> None:
        self.fh, self.digest = fh, digest
        self.name = fh.name

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)


def _check_file(data: bytes, size: int, md5: str | None, instance: str) -> None:
    _check_sizes(
        len(data), size, hashlib.md5(data, usedforsecurity=False).hexdigest() if md5 else None, md5, instance
    )


def _check_sizes(written: int, size: int, got_md5: str | None, md5: str | None, instance: str) -> None:
    """Raises TransientError: fewer bytes than the server holds (a connection cut short can look like a
    clean end), or other bytes than its MD5 says."""
    if written != size:
        raise TransientError(f"got {written} bytes, the server holds {size}", where=instance)
    if md5 is not None and got_md5 != md5:
        raise TransientError("the file's MD5 differs from the server's", where=instance)


def _same_file(target: Path, size: int, md5: str | None) -> bool:
    """Whether TARGET (from an earlier run) is the server's file: same size, and same MD5 where the
    server keeps one."""
    try:
        if target.stat().st_size != size:
            return False
    except FileNotFoundError:
        return False
    if md5 is None:
        return True
    with open(target, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest() == md5


def _series_label(series: Mapping[str, Any]) -> str:
    """How a check names a series: number, modality and description (never a patient's data)."""
    parts = [str(series.get(name) or "") for name in ("SeriesNumber", "Modality", "SeriesDescription")]
    text = " ".join(part for part in parts if part)
    return f"series {text}" if text else f"series {series.get('id', '')}"
