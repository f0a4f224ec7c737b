"""download: fetch studies from an Orthanc server into a folder tree, instance by instance, never via ZIP."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pacsflow.errors import BadInput, ConfigError, NotFound, TransientError
from pacsflow.ledger import SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.params import DownloadParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.selection import Selection, first_look, resolve
from pacsflow.wording import plural

log = logging.getLogger("pacsflow")
STUDY, INSTANCE = "study", "instance"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: str, fallback: str) -> str:
    """A folder name from a DICOM value: no separators, no dot-only names, never empty."""
    cleaned = _UNSAFE.sub("_", value.strip()).strip("._")
    return cleaned[:64] or fallback


@register
class Download(Operation):
    """Studies into a folder tree: one item per study lists its instances, one item fetches each."""

    name = "download"
    unit = "items"
    Params = DownloadParams
    p: DownloadParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | DownloadParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a server that is not configured."""
        super().__init__(settings, params)
        self.source = connect(settings, self.p.source, self.p.workers or settings.workers)
        self.out = Path(self.p.out)
        #: the studies the selectors named, looked up at the start (None: plan looks)
        self._chosen: list[str] | None = None
        #: with --anonymize: each instance de-identified in memory before it is written
        self._deid = None
        if self.p.anonymize:
            from pacsflow.ops.deidentifying import Deidentifying, settle

            self._deid = Deidentifying(self, settle(self))

    def preflight(self) -> None:
        """Raises ConfigError (--out is not a folder, a selector names no study on the server), OSError
        (--out cannot be made), PreflightError or Unauthorized (the server)."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"{self.out} exists and is not a folder")
        preflight_server(self.source)
        self._chosen = first_look(self.source, self.p)
        if self._chosen is not None:
            self.remember("matched", len(self._chosen))
        self.out.mkdir(parents=True, exist_ok=True)  # after the checks: a refused command leaves nothing

    def plan(self) -> Iterable[PlannedItem]:
        studies = self._chosen
        if studies is None:  # a query, every study, or a resume planning again
            studies = resolve(self.source, Selection.of(self.p), require_match=False)
            if not studies and self.p.query:
                log.warning("the query matches no study on %s", self.source.display)
        for study in studies:
            yield PlannedItem(STUDY, f"s/{study}", {"study": study})

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (the study or instance no longer on the server), TransientError (a download
        cut short), OSError (the folder), or what the server's answers raise."""
        if item.kind == STUDY:
            return self._plan_study(item.payload["study"])
        if self._deid is not None:
            return self._fetch_deidentified(item.payload["id"], self.out / item.payload["path"])
        return self._fetch(item.payload["id"], self.out / item.payload["path"])

    def _plan_study(self, study: str) -> Outcome:
        try:
            info = self.source.resource("studies", study)
            if self._deid is not None:
                return self._plan_deidentified(study, info)
            series = self.source.children("studies", study, "series")
        except NotFound:
            raise BadInput(f"study is not on {self.source.display}", where=study) from None
        patient = safe_name(info.get("PatientMainDicomTags", {}).get("PatientID", ""), "unknown-patient")
        study_dir = safe_name(info.get("MainDicomTags", {}).get("StudyInstanceUID", ""), study)
        children = []
        for one in series:
            series_dir = safe_name(one.get("MainDicomTags", {}).get("SeriesInstanceUID", ""), one["ID"])
            for instance in one.get("Instances", []):
                relative = f"{patient}/{study_dir}/{series_dir}/{instance}.dcm"
                children.append(
                    PlannedItem(INSTANCE, f"i/{instance}", {"id": instance, "path": relative}, phase=1)
                )
        return Outcome(result={"instances": len(children)}, children=children)

    def _plan_deidentified(self, study: str, info: dict[str, Any]) -> Outcome:
        """With --anonymize: each instance goes where its de-identified file belongs (pseudonym and new
        UIDs, never an original value in a path), known before anything is downloaded."""
        from pacsflow.ops.anonymize import output_path
        from pacsflow.ops.deidentifying import copy_names

        assert self._deid is not None
        children = [
            PlannedItem(
                INSTANCE,
                f"i/{name.instance}",
                {"id": name.instance, "path": output_path(Path(), name).as_posix()},
                phase=1,
            )
            for name in copy_names(self.source, study, info, self._deid.get())
        ]
        return Outcome(result={"instances": len(children)}, children=children)

    def _fetch_deidentified(self, instance: str, target: Path) -> Outcome:
        """Download, de-identify in memory, write (never in clear, not even as a temporary file)."""
        from pacsflow.ops.anonymize import write_atomically
        from pacsflow.ops.deidentifying import deidentify_checked

        assert self._deid is not None
        if target.exists():
            return Outcome(status=SKIPPED, note="already downloaded")
        try:
            data = self.source.instance_file(instance)
        except NotFound:
            raise BadInput(f"instance is no longer on {self.source.display}", where=instance) from None
        result = deidentify_checked(self._deid.get(), data, where=instance)
        write_atomically(self.out / _relative_of(result.record), result.data)
        return Outcome(nbytes=len(result.data), result={"anon": result.anon()})

    def _fetch(self, instance: str, target: Path) -> Outcome:
        size = self._server_size(instance)
        if self._same_file(instance, target, size):
            return Outcome(status=SKIPPED, note="already downloaded")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per attempt: after a lease takeover two workers may fetch the same instance,
        # and each must rename only a file it wrote whole.
        partial = target.with_name(f"{target.name}.{secrets.token_hex(6)}.part")
        try:
            with open(partial, "xb") as fh:
                written = self.source.stream_instance_file(instance, fh)
            if written != size:  # a connection cut short can look like a clean end
                raise TransientError(f"got {written} bytes, the server holds {size}", where=instance)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return Outcome(nbytes=written)

    def _server_size(self, instance: str) -> int:
        try:
            return int(self.source.request("GET", f"/instances/{instance}/attachments/dicom/size").text)
        except NotFound:
            raise BadInput(f"instance is no longer on {self.source.display}", where=instance) from None

    def _same_file(self, instance: str, target: Path, size: int) -> bool:
        """Whether TARGET (from an earlier run) is the server's file: same size, and same MD5 where the
        server keeps one (Orthanc's StoreMD5ForAttachments, on by default)."""
        try:
            if target.stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
        try:
            response = self.source.request("GET", f"/instances/{instance}/attachments/dicom/md5")
        except NotFound:
            expected = ""
        else:
            expected = response.text.strip().lower()
        if not expected:  # the server keeps no MD5: the size is all there is to compare
            return True
        with open(target, "rb") as fh:
            return hashlib.file_digest(fh, "md5").hexdigest() == expected

    def finish(self, run: RunInfo) -> list[str]:
        files = sum(1 for _ in self.out.rglob("*.dcm"))
        lines = [
            f"{plural(files, 'DICOM file')} under {self.out}; {run.bytes / 1e6:.1f} MB downloaded in this run"
        ]
        if self._deid is not None:
            from pacsflow.ops.deidentifying import verified_lines, write_mapping

            added = write_mapping(self.ledger, run, (INSTANCE,), f"folder:{self.out}")
            lines.append(f"de-identified on the way; {plural(added, 'new mapping row')}")
            lines += verified_lines(self.ledger, run, (INSTANCE,))
        return lines

    def close(self) -> None:
        self.source.close()


def _relative_of(record: Any) -> Path:
    from pacsflow.ops.anonymize import output_path

    return output_path(Path(), record)
