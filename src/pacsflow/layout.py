"""Where downloaded instances go: Patient/Date_Description_StudyUID/Number_Description/Number_SOPUID.dcm,
and the per-patient ZIP names `<PatientID>__seriesCount<N>.zip`, every name safe on any filesystem."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

#: what a name keeps as it is: letters and digits of any script, and . _ -; the rest becomes _
_KEEP = re.compile(r"[\w.-]", re.UNICODE)
_MAX_PART = 64
DEFAULT_DELIMITER = "__seriesCount"


def safe_part(value: str, fallback: str, limit: int = _MAX_PART, *, distinct: bool = True) -> str:
    """VALUE as one path component: separators, `..`, spaces and control characters replaced, cut to
    LIMIT characters; FALLBACK when VALUE is empty. With DISTINCT (identifiers), a value that had to
    change gets a short hash of itself appended, so that two different values (`A/B` and `A_B`) never
    share a name; a description, whose folder is told apart by a UID, is only cleaned."""
    value = value.strip()
    if not value:
        return fallback
    cleaned = "".join(char if _KEEP.fullmatch(char) and char.isprintable() else "_" for char in value)
    cleaned = cleaned.strip(".") or "_"
    if cleaned == value and len(value) <= limit:
        return value
    if not distinct:
        return cleaned[:limit].strip(".") or fallback
    digest = hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: limit - 9]}~{digest}"


def _tags(resource: Mapping[str, Any], key: str = "MainDicomTags") -> Mapping[str, Any]:
    return resource.get(key) or {}


def _joined(*parts: str) -> str:
    return "_".join(part for part in parts if part)


def patient_folder(study: Mapping[str, Any]) -> str:
    """The patient's folder of an Orthanc study resource (its PatientID)."""
    return safe_part(str(_tags(study, "PatientMainDicomTags").get("PatientID", "")), "unknown-patient")


def study_folder(study: Mapping[str, Any]) -> str:
    tags = _tags(study)
    uid = safe_part(str(tags.get("StudyInstanceUID", "")), str(study.get("ID", "study")))
    date = safe_part(str(tags.get("StudyDate", "")), "", 8)
    description = safe_part(str(tags.get("StudyDescription", "")), "", 40, distinct=False)
    return _joined(date, description, uid)


def series_folders(series: list[Mapping[str, Any]]) -> dict[str, str]:
    """Each series' folder, by Orthanc series ID: Number_Description. Two series of a study with the
    same number and description share a folder (their files keep apart by SOPInstanceUID): a name that
    depended on the study's other series would change when one is added, and a rerun would not find
    what it wrote before."""
    names = {}
    for one in series:
        tags = _tags(one)
        number = safe_part(str(tags.get("SeriesNumber", "")), "", 12)
        description = safe_part(str(tags.get("SeriesDescription", "")), "", 40, distinct=False)
        names[one["ID"]] = _joined(number, description) or "series"
    return names


def instance_file(instance: Mapping[str, Any]) -> str:
    """Number_SOPUID.dcm (the number zero-padded, so that names sort in instance order)."""
    tags = _tags(instance)
    number = str(tags.get("InstanceNumber", "")).strip()
    number = number.zfill(5) if number.isdigit() else safe_part(number, "0", 12)
    return (
        f"{number}_{safe_part(str(tags.get('SOPInstanceUID', '')), str(instance.get('ID', 'instance')))}.dcm"
    )


def patient_zip_pattern(patient: str, delimiter: str) -> re.Pattern[str]:
    """The names of PATIENT's (a safe_part) per-patient ZIPs, whatever their series count."""
    return re.compile(re.escape(f"{patient}{delimiter}") + r"(\d+)\.zip")


def patient_zip_name(patient: str, delimiter: str, series: int) -> str:
    return f"{patient}{delimiter}{series}.zip"


#: what a de-identified name keeps (pseudonyms and UIDs are ASCII already): the rest becomes _
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: str, fallback: str) -> str:
    """A folder name from a pseudonym or UID (the de-identified layout): no separators, no dot-only
    names, never empty."""
    cleaned = _UNSAFE.sub("_", value.strip()).strip("._")
    return cleaned[:64] or fallback
