"""retrieve: find patients, their studies and series on a DICOM node, C-MOVE or C-GET each series into a
folder or an Orthanc, check its instance count, and ZIP each patient as soon as its series are in."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pacsflow.config import find_name
from pacsflow.dicomfiles import InstanceUIDs
from pacsflow.dimse import check_find
from pacsflow.errors import BadInput, ConfigError, NotFound, PacsflowError, Unreachable
from pacsflow.layout import DEFAULT_DELIMITER, patient_zip_name, safe_part
from pacsflow.ledger import DONE, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.download_archives import Archives, series_folder
from pacsflow.ops.params import RetrieveParams
from pacsflow.ops.retrieve_inputs import Selector, load_selector, read_patient_list
from pacsflow.orthanc import orthanc_id
from pacsflow.qr import Refused, Session, Sessions, run_bucket
from pacsflow.services.scp import Destination, FolderDestination, StorageSCP, destination_for, keep
from pacsflow.wording import plural

log = logging.getLogger("pacsflow")

SEARCH, PATIENT, STUDY, SERIES, ARCHIVE = "search", "patient", "study", "series", "archive"
#: phases: find patients, a patient's studies, a study's series, retrieve each series, ZIP each patient;
#: every item past the search is scoped by its patient, so a patient is retrieved and zipped while
#: others are still being found (the seed's five scripts side by side)
_SEARCH, _PATIENTS, _STUDIES, _SERIES, _ZIP = 0, 1, 2, 3, 4
ALREADY = "already retrieved"
NO_STUDY = "no matching study on the node"
#: a patient whose studies hold no series of the modalities asked for: no ZIP
NO_SERIES = "no series to zip"
PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyDescription", "AccessionNumber", "ModalitiesInStudy")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")
#: SOPInstanceUIDs per C-MOVE/C-GET of missing instances (a long list makes one huge identifier)
_MISSING_PER_REQUEST = 100


class Tally:
    """A destination that also notes, per series, the bytes received and the PatientID and study its
    instances were filed under (a node's files may name another PatientID than its C-FIND answers: a
    merged patient), and a destination server that stopped answering."""

    def __init__(self, inner: Destination) -> None:
        self.inner = inner
        self.label, self.action = inner.label, inner.action
        self._bytes: dict[str, int] = {}
        self._places: dict[str, set[tuple[str, str]]] = {}
        self._down: Unreachable | None = None
        self._lock = threading.Lock()

    def store(self, data: bytes, uids: InstanceUIDs) -> str:
        try:
            where = self.inner.store(data, uids)
        except Unreachable as exc:  # the instance is refused; the item says the server is down
            with self._lock:
                self._down = exc
            raise
        with self._lock:
            self._bytes[uids.series_uid] = self._bytes.get(uids.series_uid, 0) + len(data)
            self._places.setdefault(uids.series_uid, set()).add((uids.patient_id, uids.study_uid))
        return where

    def take_bytes(self, series: str) -> int:
        with self._lock:
            return self._bytes.pop(series, 0)

    def places(self, series: str) -> set[tuple[str, str]]:
        """(PatientID, StudyInstanceUID) pairs this process filed SERIES's instances under."""
        with self._lock:
            return set(self._places.get(series, ()))

    def take_down(self) -> Unreachable | None:
        """The destination server's outage an instance met since the last look, if any."""
        with self._lock:
            down, self._down = self._down, None
        return down

    def close(self) -> None:
        self.inner.close()


@register
class Retrieve(Operation):
    """One search item finds patients (unless a list names them); per patient, one item finds its
    studies, one per study its series, one per series retrieves and checks it, one writes its ZIP."""

    name = "retrieve"
    unit = "items"
    Params = RetrieveParams
    p: RetrieveParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | RetrieveParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a node that is not configured."""
        super().__init__(settings, params)
        self.modality = settings.modality(self.p.source)
        if "://" not in self.p.to and find_name(self.p.to, settings.servers) is None:
            # a folder (as destination_for decides), stored absolute: a resume may run elsewhere
            self.remember("to", os.path.abspath(self.p.to))
        self.our_aet = self.p.aet or settings.aet
        self.port = self.p.port or settings.port
        # one bucket for every request of the run: associations, C-FIND, C-MOVE, C-GET, probes
        self.bucket = run_bucket(self.modality, self.p.rate)
        self.delimiter = self.p.delimiter or DEFAULT_DELIMITER
        self.archives = Archives(self.delimiter)
        self._sessions: Sessions | None = None
        self._lock = threading.Lock()
        self._destination: Tally | None = None
        self._scp: StorageSCP | None = None
        self._selector: Selector | None = None

    # -- before the run -------------------------------------------------------------------------

    def preflight(self) -> None:
        """Raises ConfigError (the output, the patient list or the selection cannot be used, the node
        refuses our C-FIND, our port is taken), PreflightError (the node or the server does not answer),
        Unauthorized (the server's password)."""
        if self.p.per_patient_zip and not isinstance(self._target().inner, FolderDestination):
            raise ConfigError("--per-patient-zip needs --to FOLDER: the ZIPs are made from the files there")
        if self.p.patient_list and self.run_id is None:  # a resume or a worker plans no patients again
            read_patient_list(Path(self.p.patient_list))
        self._select()
        check_find(self.modality, self.our_aet, bucket=self.bucket)
        if self.p.method == "move":
            self._storage_scp()

    def _target(self) -> Tally:
        with self._lock:
            return self._destination_unlocked()

    def _destination_unlocked(self) -> Tally:
        if self._destination is None:
            workers = self.p.workers or self.settings.workers
            self._destination = Tally(destination_for(self.settings, self.p.to, connections=workers + 2))
        return self._destination

    def _select(self) -> Selector | None:
        if self.p.select and self._selector is None:
            self._selector = load_selector(self.p.select)
        return self._selector

    def _storage_scp(self) -> None:
        """Our storage SCP, on --port for the whole run: the node's C-MOVEs send the instances there."""
        with self._lock:
            if self._scp is not None:
                return
        workers = self.p.workers or self.settings.workers
        scp = StorageSCP(
            self._target(),
            aet=self.our_aet,
            port=self.port,
            ledger=None,
            run_id=self.run_id or "",
            max_associations=2 * workers + 2,  # each worker's C-MOVE, and the node's slow releases
        )
        try:
            scp.start()
        except ConfigError as exc:  # the port is taken: by `pacsflow scp`, or this run in another process
            raise ConfigError(
                f"{exc.reason}: C-MOVE sends to one port, so one process works a move run (another pacsflow "
                "may be using it); give another --port the node knows, or use --method get, which any "
                "number of workers can share"
            ) from None
        with self._lock:
            if self._scp is None:
                self._scp = scp
                return
        scp.stop()  # another thread started one meanwhile

    def _session(self) -> Session:
        """This worker thread's association with the node."""
        with self._lock:
            if self._sessions is None:
                on_store = None
                if self.p.method == "get":
                    target = self._destination_unlocked()
                    log_phi = self.settings.log_phi

                    def on_store(event: Any) -> int:
                        return keep(event, target, log_phi, who="retrieve").status

                self._sessions = Sessions(
                    self.modality, self.our_aet, method=self.p.method, bucket=self.bucket, on_store=on_store
                )
            sessions = self._sessions
        return sessions.get()

    def plan(self) -> Iterable[PlannedItem]:
        if self.p.patient_list:
            for patient in read_patient_list(Path(self.p.patient_list)):
                # a listed patient is checked against --select once its attributes are known
                yield self._patient_item(patient, select=self.p.select is not None)
            return
        yield PlannedItem(SEARCH, "search", {}, phase=_SEARCH)

    @staticmethod
    def _patient_item(patient: str, *, select: bool) -> PlannedItem:
        scope = f"p/{orthanc_id(patient)}"  # Orthanc's patient ID: no PatientID in keys or notes
        payload = {"patient": patient, "select": select}
        return PlannedItem(PATIENT, scope, payload, phase=_PATIENTS, scope=scope)

    # -- items ----------------------------------------------------------------------------------

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (a series incomplete, a ZIP that cannot be made), ConfigError (the node does
        not know our AET as a move destination), Unreachable (the node is down: the run waits), or
        RemoteError (the node refused a request)."""
        if item.kind == SEARCH:
            return self._search()
        if item.kind == PATIENT:
            return self._patient(item)
        if item.kind == STUDY:
            return self._study(item)
        if item.kind == SERIES:
            return self._series(item.payload)
        return self._zip(item)

    def _date_range(self) -> str:
        if not (self.p.from_date or self.p.to_date):
            return ""
        return f"{self.p.from_date or ''}-{self.p.to_date or ''}"

    def _modalities(self) -> str:
        return "\\".join(self.p.modalities or ())

    def _search(self) -> Outcome:
        """Patients with a study in the date range (and modalities), as --select picks them."""
        keys = {name: "" for name in PATIENT_KEYS}
        keys.update(StudyInstanceUID="", StudyDate=self._date_range(), ModalitiesInStudy=self._modalities())
        patients: dict[str, dict[str, str]] = {}
        for study in self._session().find("STUDY", keys):
            if study["PatientID"]:
                patients.setdefault(study["PatientID"], {name: study[name] for name in PATIENT_KEYS})
        chosen = [patient for patient, attributes in patients.items() if self._chosen(attributes)]
        children = [self._patient_item(patient, select=False) for patient in chosen]
        return Outcome(
            result={"patients found": len(patients), "patients chosen": len(chosen)}, children=children
        )

    def _chosen(self, attributes: Mapping[str, str]) -> bool:
        selector = self._select()
        if selector is None:
            return True
        try:
            return bool(selector(dict(attributes)))
        except Exception as exc:  # the user's code: stop rather than guess which patients it meant
            # its message may quote the patient (int(PatientID) failing): shown only with --log-phi
            raise ConfigError(
                f"--select {self.p.select} raised {type(exc).__name__} for a patient", detail=str(exc)
            ) from None

    def _patient(self, item: Item) -> Outcome:
        """The patient's studies (in the date range, of the modalities); a study item for each."""
        patient = item.payload["patient"]
        keys = {name: "" for name in PATIENT_KEYS}
        keys.update({name: "" for name in STUDY_KEYS})
        keys.update(PatientID=patient, StudyDate=self._date_range(), ModalitiesInStudy=self._modalities())
        studies = _same_patient(self._session().find("STUDY", keys), patient)
        if item.payload.get("select") and studies and not self._chosen(studies[0]):
            return Outcome(status=SKIPPED, note="not selected")
        if not studies:
            return Outcome(status=SKIPPED, note=NO_STUDY)
        patient = studies[0]["PatientID"]  # the node's spelling: its files carry that one
        children = [
            PlannedItem(
                STUDY,
                f"st/{study['StudyInstanceUID']}",
                {"patient": patient, "study": study["StudyInstanceUID"], "tags": study},
                phase=_STUDIES,
                scope=item.scope,
            )
            for study in studies
            if study["StudyInstanceUID"]
        ]
        found = len(children)
        if self.p.per_patient_zip:
            key = f"zip/{item.key.removeprefix('p/')}"
            children.append(PlannedItem(ARCHIVE, key, {"patient": patient}, phase=_ZIP, scope=item.scope))
        return Outcome(result={"studies": found}, children=children)

    def _study(self, item: Item) -> Outcome:
        """The study's series (of the modalities asked for); a series item for each, with the count of
        instances the node announces for it (NumberOfSeriesRelatedInstances, when it gives one)."""
        payload = item.payload
        keys = {name: "" for name in SERIES_KEYS}
        keys.update(StudyInstanceUID=payload["study"], NumberOfSeriesRelatedInstances="")
        found = self._session().find("SERIES", keys)
        wanted = set(self.p.modalities or ())
        children = []
        for series in found:
            uid = series["SeriesInstanceUID"]
            if not uid or (wanted and series["Modality"].upper() not in wanted):
                continue
            count = series["NumberOfSeriesRelatedInstances"]
            tags = {**payload["tags"], **{name: series[name] for name in SERIES_KEYS}}
            children.append(
                PlannedItem(
                    SERIES,
                    f"se/{uid}",
                    {
                        "patient": payload["patient"],
                        "study": payload["study"],
                        "series": uid,
                        "expected": int(count) if count.strip().isdigit() else None,
                        "tags": tags,
                    },
                    phase=_SERIES,
                    scope=item.scope,
                )
            )
        return Outcome(result={"series": len(children), "found": len(found)}, children=children)

    # -- one series -----------------------------------------------------------------------------

    def _series(self, payload: Mapping[str, Any]) -> Outcome:
        """Retrieve the series unless it is all here; then whatever is still missing, by SOPInstanceUID;
        a series still short is incomplete (the item fails: `retry` asks again), never done."""
        study, series = payload["study"], payload["series"]
        expected = payload.get("expected") or 0
        listed: set[str] | None = None
        if not expected:  # no count (or 0) from the node: its list of the series' instances is the measure
            listed = self._listed(study, series)
            expected = len(listed)
        present = self._present(payload)
        if expected and len(present) >= expected and (listed is None or listed <= present):
            return Outcome(status=SKIPPED, note=ALREADY, result=self._result(payload, expected, present))
        session = self._session()
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        retrieved = self._retrieve(session, payload, keys, "SERIES")
        # what the node says it sent is a floor: a node may list fewer than it holds (or nothing at all)
        expected = max(expected, retrieved.completed + retrieved.warning + retrieved.failed)
        present = self._present(payload)
        if len(present) < expected:
            listed = self._listed(study, series) if listed is None else listed
            missing = sorted(listed - present)
            for start in range(0, len(missing), _MISSING_PER_REQUEST):
                chunk = "\\".join(missing[start : start + _MISSING_PER_REQUEST])
                self._retrieve(session, payload, {**keys, "SOPInstanceUID": chunk}, "IMAGE")
            present = self._present(payload)
        self._raise_if_destination_down()
        nbytes = self._target().take_bytes(series)
        if not expected:
            raise BadInput("the node lists no instance of this series and sent none", where=_label(payload))
        if len(present) < expected:
            now = f"; the node lists {len(listed)} now" if listed is not None else ""
            short = BadInput(
                f"incomplete: {len(present)} of {expected} instances{now}", where=_label(payload)
            )
            short.result, short.nbytes = self._result(payload, expected, present), nbytes  # for the inventory
            raise short
        return Outcome(nbytes=nbytes, result=self._result(payload, expected, present))

    def _result(self, payload: Mapping[str, Any], expected: int, present: set[str]) -> dict[str, Any]:
        """The counts, and where the series' files are when the node filed them under another PatientID
        or study than its C-FIND said (the ZIP looks there)."""
        result: dict[str, Any] = {"expected": expected, "present": len(present)}
        others = self._target().places(payload["series"]) - {(payload["patient"], payload["study"])}
        if others:
            result["filed_under"] = sorted([patient, study] for patient, study in others)
        return result

    def _retrieve(
        self, session: Session, payload: Mapping[str, Any], keys: dict[str, str], level: str
    ) -> Any:
        try:
            return session.retrieve(keys, level, destination=self.our_aet)
        except Refused as exc:
            self._raise_if_destination_down()
            raise self._refused(exc, payload) from None

    def _raise_if_destination_down(self) -> None:
        """The destination server stopped answering while instances came: the run waits for it (the
        instances it refused are asked for again then), rather than fail the series."""
        down = self._target().take_down()
        if down is not None:
            raise down

    def _refused(self, exc: Refused, payload: Mapping[str, Any]) -> PacsflowError:
        """What a refused retrieval means. Orthanc, like many nodes, answers a C-MOVE to an AE title it
        does not know with a plain failure (0xC000), not "move destination unknown" (0xA801): a refusal
        before anything was sent, of a series the node still lists, while the node never even connected
        to our storage SCP, is that; then the run stops with the fix, rather than fail every series
        alike. Anything else is retried with backoff (Refused is transient), then fails the series."""
        nothing_sent = not (exc.retrieved.completed or exc.retrieved.failed or exc.retrieved.warning)
        never_connected = self._scp is not None and self._scp.connections == 0
        if self.p.method != "move" or not nothing_sent or not never_connected:
            return exc
        if not self._listed(payload["study"], payload["series"]):
            return BadInput("the node no longer has this series", where=_label(payload))
        return ConfigError(
            f"{exc.reason} and never connected to our storage SCP: it likely does not know our AET "
            f"{self.our_aet!r} as a move destination; add {self.our_aet} with this machine's address and "
            f"port {self.port} to its DICOM modalities, or use --method get"
        )

    def _listed(self, study: str, series: str) -> set[str]:
        """The SOPInstanceUIDs the node lists for the series now (an IMAGE-level C-FIND)."""
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": ""}
        return {one["SOPInstanceUID"] for one in self._session().find("IMAGE", keys) if one["SOPInstanceUID"]}

    def _present(self, payload: Mapping[str, Any]) -> set[str]:
        """The series' SOPInstanceUIDs kept so far: files in its folder, or instances on the server,
        under the C-FIND's PatientID and study and wherever this process filed the series otherwise."""
        series = payload["series"]
        places = {(payload["patient"], payload["study"]), *self._target().places(series)}
        found: set[str] = set()
        for patient, study in places:
            found |= self._present_at(patient, study, series)
        return found

    def _present_at(self, patient: str, study: str, series: str) -> set[str]:
        target = self._target().inner
        if isinstance(target, FolderDestination):
            try:
                names = os.listdir(_series_path(target.root, patient, study, series))
            except FileNotFoundError:
                return set()
            return {name[: -len(".dcm")] for name in names if name.endswith(".dcm")}
        server = target.server  # type: ignore[attr-defined]
        try:
            instances = server.children("series", orthanc_id(patient, study, series), "instances")
        except NotFound:
            return set()
        return {str(one.get("MainDicomTags", {}).get("SOPInstanceUID", "")) for one in instances} - {""}

    # -- one patient's ZIP ----------------------------------------------------------------------

    def _zip(self, item: Item) -> Outcome:
        """`<PatientID><delimiter><series>.zip` from the patient's files, once all its studies are found
        and all its series in; an earlier ZIP of the patient is replaced (its entries kept) only when the
        new one is whole. A patient with a study or series not complete gets no ZIP (the item fails, so
        that `retry` makes it once they are)."""
        patient = item.payload["patient"]
        scoped = [one for one in self.ledger.items(item.run_id, scope=item.scope) if one.kind != ARCHIVE]
        short = [one for one in scoped if one.status not in (DONE, SKIPPED)]
        if short:
            kinds = sorted({one.kind for one in short})
            raise BadInput(
                f"ZIP not written: {plural(len(short), 'item')} of the patient not complete "
                f"({', '.join(kinds)}); `pacsflow retry RUN` asks for them again",
                where=item.key,
            )
        series_items = [one for one in scoped if one.kind == SERIES]
        if not series_items:
            return Outcome(status=SKIPPED, note=NO_SERIES)
        target = self._target().inner
        assert isinstance(target, FolderDestination)
        folder = safe_part(patient, "unknown-patient")
        names = []
        for one in series_items:
            places = [(one.payload["patient"], one.payload["study"])]
            places += [tuple(place) for place in (one.result or {}).get("filed_under", ())]
            for where_patient, where_study in places:
                path = _series_path(target.root, where_patient, where_study, one.payload["series"])
                relative = path.relative_to(target.root).as_posix()
                try:
                    listed = os.listdir(path)
                except FileNotFoundError:
                    continue
                names += sorted(f"{relative}/{name}" for name in listed if name.endswith(".dcm"))
        zips = Path(self.p.per_patient_zip or "")
        earlier = self.archives.latest_of(zips, folder)
        kept = {series_folder(name) for name in (earlier.sizes if earlier is not None else ())}
        count = len({series_folder(name) for name in names} | kept)
        final = zips / patient_zip_name(folder, self.delimiter, count)
        builder = self.archives.builder(final)
        for name in names:
            if not builder.holds(name):
                builder.append(name, (target.root / name).read_bytes())
        outcome, entries = self.archives.close(final, names, folder)
        note = "unchanged" if outcome == "unchanged" else None
        return Outcome(
            status=SKIPPED if note else DONE, note=note, result={"zip": final.name, "entries": entries}
        )

    # -- after the run --------------------------------------------------------------------------

    def finish(self, run: RunInfo) -> list[str]:
        series = self.ledger.items(run.id, kind=SERIES)
        complete = [one for one in series if one.status in (DONE, SKIPPED)]
        instances = sum(int((one.result or {}).get("present", 0)) for one in complete)
        where = self._target().label
        lines = [
            f"{len(complete)} of {plural(len(series), 'series')} complete ({plural(instances, 'instance')}) "
            f"in {where}; {run.bytes / 1e6:.1f} MB received in this run"
        ]
        patients = self.ledger.items(run.id, kind=PATIENT)
        if self.p.patient_list and patients and all(one.last_error == NO_STUDY for one in patients):
            lines.append(
                f"none of the {plural(len(patients), 'listed patient')} has a matching study on the node "
                "(is the list's PatientID column the right one, and the date range?)"
            )
        incomplete = len(series) - len(complete)
        if incomplete:
            lines.append(
                f"{plural(incomplete, 'series')} incomplete or not retrieved: `pacsflow run show "
                f"{run.id} --failed`"
            )
        if self.p.per_patient_zip:
            archives = [one for one in self.ledger.items(run.id, kind=ARCHIVE) if one.last_error != NO_SERIES]
            written = [one for one in archives if one.status in (DONE, SKIPPED)]
            lines.append(
                f"{plural(len(written), 'ZIP')} of {len(archives)} complete in {self.p.per_patient_zip}"
            )
        return lines

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, None
            scp, self._scp = self._scp, None
            destination, self._destination = self._destination, None
        if sessions is not None:
            sessions.close()
        if scp is not None:
            scp.stop()
        if destination is not None:
            destination.close()


def _same_patient(studies: list[dict[str, str]], patient: str) -> list[dict[str, str]]:
    """The answers that are PATIENT's: a node may match a PatientID as a wildcard (`*`, `?`), or ignore
    case and spaces as its database collation does. Exact matches when there are any, else those that
    differ only in case or surrounding spaces (a list typed in other case: the node's spelling is used)."""
    exact = [one for one in studies if one["PatientID"] == patient]
    if exact:
        return exact
    loose = patient.strip().casefold()
    return [one for one in studies if one["PatientID"].strip().casefold() == loose]


def _series_path(root: Path, patient: str, study: str, series: str) -> Path:
    """Where FolderDestination keeps the series (the storage SCP's layout)."""
    return (
        root
        / safe_part(patient, "unknown-patient")
        / safe_part(study, "unknown-study")
        / safe_part(series, "unknown-series")
    )


def _counts(expected: int, present: set[str]) -> dict[str, int]:
    return {"expected": expected, "present": len(present)}


def _label(payload: Mapping[str, Any]) -> str:
    """How a failure names a series: number, modality and description (never the patient)."""
    tags = payload.get("tags") or {}
    parts = [str(tags.get(name) or "") for name in ("SeriesNumber", "Modality", "SeriesDescription")]
    text = " ".join(part for part in parts if part)
    return f"series {text}" if text else f"series {payload.get('series', '')}"
