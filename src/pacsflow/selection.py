"""Which studies a command works on: --study, --accession, --patient and --query, checked and resolved."""

# One module for every command that picks studies (transfer, download, and later delete and anonymize):
# the flags mean the same everywhere, a misspelt tag or a bad date is refused before anything runs, and a
# selector that names nothing stops the command instead of making a run that does nothing.
# Light at import time (no httpx, no pydicom): the parameter models and the CLI import it; pydicom's
# dictionary is loaded only when a query is checked.

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from pacsflow.errors import ConfigError, NotFound

if TYPE_CHECKING:
    from pacsflow.orthanc import Orthanc

#: an Orthanc ID: the SHA-1 of the DICOM UIDs, as five groups of eight hex digits
ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
_HEX_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")
_DATE = r"\d{8}|\d{4}-\d{2}-\d{2}"
_ONE_DATE = re.compile(rf"(?:{_DATE})")
_DATE_RANGE = re.compile(rf"(?P<low>{_DATE})?-(?P<high>{_DATE})?")
DATE_FORMATS = "YYYYMMDD or YYYY-MM-DD"
QUERY_EXAMPLE = "TAG=VALUE, e.g. PatientID=PF* or StudyDate=20200101-20201231"
#: above this many Orthanc IDs, one list of the server's studies is cheaper than one request per ID
_LIST_ALL_ABOVE = 20


# -- checking what the user wrote ---------------------------------------------------------------


@cache
def _keywords() -> dict[str, str]:
    """Every DICOM keyword of pydicom's dictionary, by its lower-case spelling."""
    from pydicom.datadict import keyword_dict

    return {keyword.lower(): keyword for keyword in keyword_dict if keyword}


def tag_keyword(name: str, option: str = "--query") -> str:
    """NAME (a keyword in any case, or a tag such as 0010,0010) as Orthanc's /tools/find takes it: the
    dictionary's keyword, or `gggg,eeee` for a tag without one (private tags).

    Raises ConfigError for a name the DICOM dictionary lacks, with the nearest keyword when one is close.
    """
    from pydicom.datadict import keyword_for_tag

    name = name.strip()
    hex_tag = _HEX_TAG.fullmatch(name)
    if hex_tag:
        group, element = hex_tag.groups()
        return keyword_for_tag(int(group + element, 16)) or f"{group},{element}".upper()
    keywords = _keywords()
    if name.lower() in keywords:
        return keywords[name.lower()]
    close = difflib.get_close_matches(name.lower(), keywords, n=1, cutoff=0.6)
    hint = f" (did you mean {keywords[close[0]]}?)" if close else ""
    raise ConfigError(f"{option} {name}: not a DICOM tag keyword{hint}; write e.g. PatientID or 0010,0020")


def _is_date_tag(keyword: str) -> bool:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(keyword) == "DA"
    except (KeyError, ValueError):  # a private or unknown tag (gggg,eeee): Orthanc matches it as text
        return False


def normalize_date(text: str, option: str, *, show: bool = True) -> str:
    """One date written YYYYMMDD or YYYY-MM-DD, as DICOM writes it (YYYYMMDD).

    Raises ConfigError naming OPTION (and the value, with SHOW) when it is no date of the calendar.
    """
    shown = f" {text!r}" if show else ""
    if not _ONE_DATE.fullmatch(text):
        raise ConfigError(f"{option}{shown}: write a date as {DATE_FORMATS}")
    digits = text.replace("-", "")
    try:
        datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise ConfigError(f"{option}{shown}: no such date (write {DATE_FORMATS})") from None
    return digits


def normalize_date_range(text: str, option: str, *, show: bool = True) -> str:
    """A date (YYYYMMDD or YYYY-MM-DD) or a range FROM-TO, FROM- or -TO of such dates, in DICOM's form
    (`20200101-20201231`). Raises ConfigError for anything else, and for a range that ends before it
    starts (it would match nothing, silently)."""
    text = text.strip()
    if not text:
        return text  # an empty value matches every study, as in DICOM
    if _ONE_DATE.fullmatch(text):
        return normalize_date(text, option, show=show)
    found = _DATE_RANGE.fullmatch(text)
    shown = f" {text!r}" if show else ""
    if not found or not (found["low"] or found["high"]):
        raise ConfigError(
            f"{option}{shown}: write a date ({DATE_FORMATS}) or a range FROM-TO, FROM- or -TO of such dates"
        )
    low = normalize_date(found["low"], option, show=show) if found["low"] else ""
    high = normalize_date(found["high"], option, show=show) if found["high"] else ""
    if low and high and low > high:
        raise ConfigError(f"{option}{shown}: the range ends before it starts")
    return f"{low}-{high}"


def check_query(query: Mapping[str, str] | None) -> dict[str, str] | None:
    """QUERY (tag -> value) checked against the DICOM dictionary: keywords in their dictionary spelling,
    tags like 0010,0010 by their keyword, dates and date ranges as DICOM writes them. None when empty.

    Raises ConfigError naming the first tag or date that is wrong, before any server is asked: Orthanc
    answers a misspelt tag with an HTTP 500, and matches a date written otherwise to nothing.
    """
    checked: dict[str, str] = {}
    for name, value in (query or {}).items():
        keyword = tag_keyword(str(name))
        text = str(value).strip()
        if _is_date_tag(keyword):
            # a patient's dates (birth date) identify people: not shown in the message
            text = normalize_date_range(text, f"--query {keyword}", show=not keyword.startswith("Patient"))
        checked[keyword] = text
    return checked or None


def parse_query(conditions: Iterable[str] | None) -> dict[str, str] | None:
    """`--query` flags as typed (`PatientID=PF*`, `StudyDate=2020-01-01-2020-12-31`) -> a checked query
    for Orthanc's /tools/find (see check_query); None when there are none.

    Raises ConfigError for a condition without `=`, an unknown tag or a bad date.
    """
    query: dict[str, str] = {}
    for number, condition in enumerate(conditions or [], 1):
        tag, sep, value = str(condition).partition("=")
        if not sep or not tag.strip():
            # the condition may be all value (`PatientID:PF1`): named by its place, shown only with --log-phi
            raise ConfigError(f"--query #{number}: write {QUERY_EXAMPLE}", detail=repr(condition))
        query[tag.strip()] = value.strip()
    return check_query(query)


def study_date_range(from_date: str | None, to_date: str | None) -> str | None:
    """--from-date and --to-date (YYYYMMDD or YYYY-MM-DD) as one DICOM StudyDate range; None without
    either. Raises ConfigError for a bad date, or a range that ends before it starts."""
    if not from_date and not to_date:
        return None
    low = normalize_date(from_date.strip(), "--from-date") if from_date else ""
    high = normalize_date(to_date.strip(), "--to-date") if to_date else ""
    if low and high and low > high:
        raise ConfigError(f"--from-date {from_date!r} is after --to-date {to_date!r}: nothing would match")
    return f"{low}-{high}"


# -- resolving on a server ------------------------------------------------------------------------

#: the selectors, as the parameter models name them, and the flags that set them
SELECTORS = {"studies": "--study", "accessions": "--accession", "patients": "--patient"}
_WHAT = {
    "studies": "Orthanc ID or StudyInstanceUID",
    "accessions": "AccessionNumber",
    "patients": "PatientID",
}


@dataclass(frozen=True)
class Selection:
    """The studies a command was asked for: named by selectors (their union), found by a query, or all."""

    studies: tuple[str, ...] = ()
    accessions: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    query: Mapping[str, str] | None = None
    #: Orthanc labels (1.12+) every chosen study carries: they narrow what the rest chose
    labels: tuple[str, ...] = ()

    @classmethod
    def of(cls, params: Any) -> Selection:
        """The selection of a parameter model (or anything with these attributes; absent ones are empty)."""
        return cls(
            tuple(getattr(params, "studies", None) or ()),
            tuple(getattr(params, "accessions", None) or ()),
            tuple(getattr(params, "patients", None) or ()),
            getattr(params, "query", None) or None,
            tuple(getattr(params, "labels", None) or ()),
        )

    @property
    def named(self) -> bool:
        """Whether selectors name the studies (each must match at least one)."""
        return bool(self.studies or self.accessions or self.patients)


def _numbered(flag: str, n: int, total: int) -> str:
    return f"{flag} #{n + 1}" if total > 1 else flag


def study_level(query: Mapping[str, str]) -> dict[str, str]:
    """QUERY as a study-level find understands it: `Modality=CT` means studies with a CT series, which
    Orthanc matches as ModalitiesInStudy (asked at study level, a series tag alone matches nothing)."""
    found = dict(query)
    if "Modality" in found and "ModalitiesInStudy" not in found:
        found["ModalitiesInStudy"] = found.pop("Modality")
    return found


def resolve(server: Orthanc, selection: Selection, *, require_match: bool = True) -> list[str]:
    """The Orthanc study IDs SELECTION names on SERVER, in the order asked, each once: every study with
    a query or no selectors at all; otherwise the union of what each selector matches (`*` and `?` are
    wildcards in accession numbers and patient IDs, as in a query).

    With REQUIRE_MATCH a selector that matches nothing raises ConfigError naming its flag (and which one
    of several); the values go to `detail` (patient data: shown with --log-phi only). Raises what the
    server's answers raise; ConfigError for labels on a server without them (before Orthanc 1.12).
    """
    if selection.labels:
        return _labelled(server, selection, require_match=require_match)
    if not selection.named:
        if selection.query:
            return list(server.find("Study", study_level(selection.query)))
        return list(server.ids("studies"))
    found: dict[str, None] = {}  # an ordered set
    unmatched: list[tuple[str, str]] = []  # (which selector, its value)
    ids = [value for value in selection.studies if ORTHANC_ID.fullmatch(value.lower())]
    every = set(server.ids("studies")) if len(ids) > _LIST_ALL_ABOVE else None
    for name in SELECTORS:
        values: tuple[str, ...] = getattr(selection, name)
        for n, value in enumerate(values):
            matches = _matches(server, name, value, every)
            if not matches:
                unmatched.append((_numbered(SELECTORS[name], n, len(values)), f"{_WHAT[name]} {value}"))
            found.update(dict.fromkeys(matches))
    if unmatched and require_match:
        which = ", ".join(flag for flag, _ in unmatched)
        verb = "matches" if len(unmatched) == 1 else "match"
        raise ConfigError(
            f"{which} {verb} no study on {server.display}",
            detail="; ".join(value for _, value in unmatched),
        )
    return list(found)


def _labelled(server: Orthanc, selection: Selection, *, require_match: bool) -> list[str]:
    """The studies carrying every label of SELECTION among those the rest of it chooses. Raises
    ConfigError on a server without labels (before Orthanc 1.12)."""
    capabilities = server.capabilities()
    if not capabilities.labels:
        raise ConfigError(
            f"--label needs Orthanc 1.12 or newer; {server.display} runs {capabilities.version}"
        )
    labelled = server.find("Study", study_level(selection.query or {}), labels=selection.labels)
    if not selection.named:
        return list(labelled)
    unlabelled = Selection(selection.studies, selection.accessions, selection.patients, selection.query)
    chosen = set(labelled)
    return [study for study in resolve(server, unlabelled, require_match=require_match) if study in chosen]


def _matches(server: Orthanc, name: str, value: str, every: set[str] | None) -> list[str]:
    """The studies one selector value names on SERVER."""
    if name == "studies" and ORTHANC_ID.fullmatch(value.lower()):
        value = value.lower()  # Orthanc writes its IDs in lower case
        if every is not None:
            return [value] if value in every else []
        try:
            server.resource("studies", value)
        except NotFound:
            return []
        return [value]
    key = {"studies": "StudyInstanceUID", "accessions": "AccessionNumber", "patients": "PatientID"}[name]
    return list(server.find("Study", {key: value}))


def clean_selectors(values: Iterable[str] | None, name: str) -> list[str] | None:
    """Selector values as given, stripped; None when there are none. Raises ConfigError for an empty
    value: Orthanc matches an empty PatientID to every patient, which no one means."""
    cleaned = [str(value).strip() for value in values or []]
    if any(not value for value in cleaned):
        raise ConfigError(f"{SELECTORS[name]}: give a value (an empty one would match every study)")
    return cleaned or None


def first_look(server: Orthanc, params: Any) -> list[str] | None:
    """At the start of a run: the studies its selectors name, each of which must match (ConfigError
    otherwise, before any run exists). None when the run selects by query or takes everything, or when
    it is resumed (`matched` set at its start: a resume does not ask again, since a study done and gone
    meanwhile must not stop the rest)."""
    selection = Selection.of(params)
    if not (selection.named or selection.labels) or getattr(params, "matched", None) is not None:
        return None
    return resolve(server, selection)
