"""What a download fetches of one study: its series with their expected counts, and each instance with
the name it gets (pacsflow.layout, or the de-identified layout), its size and its series."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsflow.errors import BadInput, NotFound
from pacsflow.layout import instance_file, patient_folder, series_folders, study_folder
from pacsflow.orthanc import Orthanc


@dataclass
class SeriesSummary:
    """One series as the server listed it when the run looked; the inventory's row comes from it."""

    id: str
    tags: dict[str, str]
    #: the count the series should have where Orthanc knows it (ExpectedNumberOfInstances), else None
    expected: int | None
    #: instances the server listed
    listed: int
    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # the server's size of each file NAMES lists

    def as_result(self) -> dict[str, Any]:
        """The series in a study item's result (names left out: the instance items hold them)."""
        return {"id": self.id, **self.tags, "expected": self.expected, "listed": self.listed}


@dataclass
class InstanceEntry:
    id: str
    name: str  # relative path: the file under --out, the entry in a ZIP
    series: str
    size: int


@dataclass
class StudyListing:
    study: str
    patient: str  # Orthanc patient ID
    patient_folder: str  # the patient's name in paths and per-patient ZIP names
    series: list[SeriesSummary]
    instances: list[InstanceEntry]


_STUDY_TAGS = ("StudyInstanceUID", "StudyDate", "StudyDescription", "AccessionNumber")
_SERIES_TAGS = ("SeriesInstanceUID", "SeriesNumber", "Modality", "SeriesDescription")
_PATIENT_TAGS = ("PatientID", "PatientName")


def list_study(server: Orthanc, study: str, deidentifier: Any = None) -> StudyListing:
    """STUDY's series and instances on SERVER, named in clear or (with DEIDENTIFIER) by pseudonym and
    new UIDs. Raises BadInput when the study is not on the server (any more)."""
    try:
        info = server.resource("studies", study)
        series = server.children("studies", study, "series")
        instances = server.children("studies", study, "instances")
    except NotFound:
        raise BadInput(f"study is not on {server.display}", where=study) from None
    common = {name: str(info.get("MainDicomTags", {}).get(name, "")) for name in _STUDY_TAGS}
    common |= {name: str(info.get("PatientMainDicomTags", {}).get(name, "")) for name in _PATIENT_TAGS}
    common["study"] = study
    summaries = {
        one["ID"]: SeriesSummary(
            one["ID"],
            {**common, **{name: str(one.get("MainDicomTags", {}).get(name, "")) for name in _SERIES_TAGS}},
            _count(one.get("ExpectedNumberOfInstances")),
            len(one.get("Instances", [])),
        )
        for one in series
    }
    if deidentifier is not None:
        names = _deidentified_names(server, study, info, deidentifier)
        patient = next(iter(names.values()), "").split("/", 1)[0] or "unknown-patient"
    else:
        patient = patient_folder(info)
        base = f"{patient}/{study_folder(info)}"
        folders = series_folders(series)
        names = {
            one["ID"]: f"{base}/{folders.get(one.get('ParentSeries', ''), 'series')}/{instance_file(one)}"
            for one in instances
        }
    entries = []
    for one in instances:
        entry = InstanceEntry(
            one["ID"], names[one["ID"]], one.get("ParentSeries", ""), int(one.get("FileSize", 0))
        )
        entries.append(entry)
        if entry.series in summaries:
            summaries[entry.series].names.append(entry.name)
            summaries[entry.series].sizes.append(entry.size)
    return StudyListing(study, str(info.get("ParentPatient", "")), patient, list(summaries.values()), entries)


def _count(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _deidentified_names(
    server: Orthanc, study: str, info: dict[str, Any], deidentifier: Any
) -> dict[str, str]:
    """Where each instance's de-identified file goes: Pseudonym/NewStudyUID/NewSeriesUID/NewSOPUID.dcm
    (never an original value in a name)."""
    from pacsflow.ops.anonymize import output_path
    from pacsflow.ops.deidentifying import copy_names

    return {
        name.instance: output_path(Path(), name).as_posix()
        for name in copy_names(server, study, info, deidentifier)
    }
