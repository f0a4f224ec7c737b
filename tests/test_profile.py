"""anonymize/profile.json: PS3.15 Table E.1-1 from tools/make_profile.py, checked against dicom-anonymizer."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import keyword_for_tag
from tools.make_profile import SourceError, build

PROFILE = Path(__file__).resolve().parent.parent / "src" / "pacsflow" / "anonymize" / "profile.json"
COLUMNS = [
    "basic",
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
]
# tag key -> one row of Table E.1-1
Attributes = dict[str, dict[str, Any]]
ACTION_CODES = {"", "X", "Z", "D", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
TAG_KEY = re.compile(r"\([0-9A-Fx]{4},[0-9A-Fx]{4}\)")

# dicom-anonymizer's lists, one per Basic Profile action
ANONYMIZER_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# The edition profile.json was generated from; the databases below are the ones dicom-anonymizer 2.1 ships
# on either side of it. Regenerating from another edition means choosing them again.
EDITION = "2025e"
# database -> {tag: why it is in dicom-anonymizer's edition but not in ours}
MISSING_FROM_OURS: dict[str, dict[str, str]] = {
    "dicomfields_2024b": {},
    "dicomfields_2026c": {
        "(0040,E012)": "Display URI: added to Table E.1-1 after 2025e (not in our part15.xml at all)",
    },
}
# database -> {tag: why its Basic Profile action differs from ours}: empty, as both agree with 2025e on every
# row they share (the 2023 database would not: Patient ID became Z/D in between)
ACTION_CHANGED: dict[str, dict[str, str]] = {"dicomfields_2024b": {}, "dicomfields_2026c": {}}


@cache
def load_profile() -> dict[str, Any]:
    """The committed profile, read once: tests that alter it work on a copy."""
    return json.loads(PROFILE.read_text(encoding="utf-8"))


@pytest.fixture
def profile() -> dict[str, Any]:
    return copy.deepcopy(load_profile())


def anonymizer_key(tag: tuple[int, ...]) -> str:
    """dicom-anonymizer's (group, element[, group mask, element mask]) as our key; masked digits are 'x'."""
    group, element, *masks = tag
    group_mask, element_mask = masks or (0xFFFF, 0xFFFF)

    def hex4(value: int, mask: int) -> str:
        return "".join("x" if not (mask >> s) & 0xF else f"{(value >> s) & 0xF:X}" for s in (12, 8, 4, 0))

    return f"({hex4(group, group_mask)},{hex4(element, element_mask)})"


@cache
def anonymizer_actions(database: str) -> dict[str, str]:
    """Tag key -> Basic Profile action, from one of dicom-anonymizer's databases."""
    lists = dicom_anonymization_database_selector(database)
    actions: dict[str, str] = {}
    for name, code in ANONYMIZER_ACTIONS.items():
        for tag in lists[name]:
            key = anonymizer_key(tag)
            # a tag in two lists would make the comparison meaningless
            assert key not in actions, f"{database}: {key} is in {actions.get(key)} and {code}"
            actions[key] = code
    return actions


def disagreements(attributes: Attributes, reference: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Tags both have whose Basic Profile actions differ: tag -> (ours, reference)."""
    return {
        tag: (attributes[tag]["basic"], code)
        for tag, code in reference.items()
        if tag in attributes and attributes[tag]["basic"] != code
    }


def missing_from(attributes: Attributes, reference: dict[str, str]) -> set[str]:
    """Tags the reference has and we lack."""
    return {tag for tag in reference if tag not in attributes}


def test_shape(profile: dict[str, Any]) -> None:
    assert list(profile) == [
        "table",
        "edition",
        "source",
        "generated_by",
        "columns",
        "attributes",
        "safe_private",
    ]
    assert profile["table"] == "DICOM PS3.15 Table E.1-1"
    assert re.fullmatch(r"\d{4}[a-e]", profile["edition"])
    assert profile["source"] and profile["generated_by"] == "tools/make_profile.py"
    assert list(profile["columns"]) == COLUMNS
    assert profile["columns"]["basic"] == "Basic Prof."
    attributes = profile["attributes"]
    assert len(attributes) > 500
    for tag, entry in attributes.items():
        assert tag == "private" or TAG_KEY.fullmatch(tag), tag
        assert list(entry) == ["name", "keyword", "retired", *COLUMNS], tag
        assert entry["name"] and isinstance(entry["retired"], bool), tag
        assert {entry[column] for column in COLUMNS} <= ACTION_CODES, tag
        # every row of the table says what the Basic Profile does
        assert entry["basic"], tag


def test_sorted_by_tag(profile: dict[str, Any]) -> None:
    tags = [tag for tag in profile["attributes"] if tag != "private"]
    assert tags == sorted(tags, key=lambda tag: tag.replace("x", "0"))
    assert list(profile["attributes"])[-1] == "private"


def test_keywords_are_pydicoms(profile: dict[str, Any]) -> None:
    # pydicom's dictionary may be older than the edition, so a missing keyword is allowed, a wrong one is not
    for tag, entry in profile["attributes"].items():
        if entry["keyword"]:
            assert entry["keyword"] == keyword_for_tag(int(tag[1:5] + tag[6:10], 16)), tag
        if "x" in tag or tag == "private":
            assert entry["keyword"] == "", tag


@pytest.mark.parametrize(
    ("tag", "keyword", "actions"),
    [
        ("(0010,0010)", "PatientName", {"basic": "Z"}),
        # Z/D since 2024b: dicom-anonymizer's 2023 database still says Z
        ("(0010,0020)", "PatientID", {"basic": "Z/D"}),
        ("(0008,0018)", "SOPInstanceUID", {"basic": "U", "retain_uids": "K"}),
        ("(0020,000D)", "StudyInstanceUID", {"basic": "U", "retain_uids": "K"}),
        (
            "(0008,0020)",
            "StudyDate",
            {"basic": "Z", "retain_long_full_dates": "K", "retain_long_modified_dates": "C"},
        ),
        ("(0010,1010)", "PatientAge", {"basic": "X", "retain_patient_characteristics": "K"}),
        ("(0008,0080)", "InstitutionName", {"basic": "X/Z/D", "retain_institution_identity": "K"}),
        ("(0018,1000)", "DeviceSerialNumber", {"basic": "X/Z/D", "retain_device_identity": "K"}),
        ("(0008,1030)", "StudyDescription", {"basic": "X", "clean_descriptors": "C"}),
        ("(0040,A730)", "ContentSequence", {"basic": "D", "clean_structured_content": "C"}),
        ("(0008,1140)", "ReferencedImageSequence", {"basic": "X/Z/U*", "retain_uids": "K"}),
        ("(60xx,3000)", "", {"basic": "X", "clean_graphics": "C"}),
        ("(50xx,xxxx)", "", {"basic": "X", "clean_graphics": "C"}),
        ("private", "", {"basic": "X", "retain_safe_private": "C"}),
    ],
)
def test_known_rows(profile: dict[str, Any], tag: str, keyword: str, actions: dict[str, str]) -> None:
    entry = profile["attributes"][tag]
    assert entry["keyword"] == keyword
    # columns not named are empty: an action added to a known row should be noticed
    assert {column: entry[column] for column in COLUMNS if entry[column]} == actions


def test_retired_rows(profile: dict[str, Any]) -> None:
    attributes = profile["attributes"]
    assert attributes["(50xx,xxxx)"]["retired"] and attributes["(0010,2160)"]["retired"]
    assert not attributes["(0010,0010)"]["retired"]


def test_modality_is_not_in_the_table(profile: dict[str, Any]) -> None:
    assert "(0008,0060)" not in profile["attributes"]


def test_safe_private(profile: dict[str, Any]) -> None:
    rows = profile["safe_private"]
    assert len(rows) > 100
    for row in rows:
        assert list(row) == ["creator", "tag", "vr", "meaning"]
        assert row["creator"] and re.fullmatch(r"\([0-9A-F]{3}[13579BDF],xx[0-9A-F]{2}\)", row["tag"]), row
    table_speed = {"creator": "GEMS_ACQU_01", "tag": "(0019,xx23)", "vr": "DS"}
    assert {**table_speed, "meaning": "Table Speed [mm/rotation]"} in rows
    assert len({(row["creator"], row["tag"]) for row in rows}) == len(rows)


@pytest.mark.parametrize("database", sorted(MISSING_FROM_OURS))
def test_basic_profile_agrees_with_dicom_anonymizer(profile: dict[str, Any], database: str) -> None:
    assert profile["edition"] == EDITION, "regenerated from another edition: review the databases compared"
    reference = anonymizer_actions(database)
    attributes = profile["attributes"]
    assert disagreements(attributes, reference).keys() == ACTION_CHANGED[database].keys()
    missing = missing_from(attributes, reference)
    assert missing == MISSING_FROM_OURS[database].keys()
    # rows of ours that dicom-anonymizer lacks are attributes added after its edition (or the private row)
    assert len(attributes) - (len(reference) - len(missing)) < 50


def test_a_changed_row_is_caught(profile: dict[str, Any]) -> None:
    reference = anonymizer_actions("dicomfields_2024b")
    profile["attributes"]["(0010,0010)"]["basic"] = "K"
    assert disagreements(profile["attributes"], reference) == {"(0010,0010)": ("K", "Z")}
    del profile["attributes"]["(0010,0020)"]
    assert missing_from(profile["attributes"], reference) == {"(0010,0020)"}


# the header cells of Table E.1-1 as part15.xml writes them (the olink is how it names PS3.6)
DOCBOOK_HEADERS = [
    "Attribute Name",
    "Tag",
    "Retd. (from <olink targetptr='PS3.6'/>)",
    "In Std. Comp. IOD",
    "Basic Prof.",
    "Rtn. Safe Priv. Opt.",
    "Rtn. UIDs Opt.",
    "Rtn. Dev. Id. Opt.",
    "Rtn. Inst. Id. Opt.",
    "Rtn. Pat. Chars. Opt.",
    "Rtn. Long. Full Dates Opt.",
    "Rtn. Long. Modif. Dates Opt.",
    "Clean Desc. Opt.",
    "Clean Struct. Cont. Opt.",
    "Clean Graph. Opt.",
]


def docbook(rows: list[list[str]]) -> bytes:
    """A part15.xml cut down to the two tables the script reads."""

    def table(table_id: str, headers: list[str], body: list[list[str]]) -> str:
        head = "".join(f"<th><para><emphasis>{text}</emphasis></para></th>" for text in headers)
        cells = ["".join(f"<td><para>{cell}</para></td>" for cell in row) for row in body]
        trs = "".join(f"<tr>{row}</tr>" for row in cells)
        return f"<table xml:id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"

    safe = [["(0019,xx2a)", "GEMS_ACQU_01", "FL", "1", "Some Factor"]]
    return (
        "<book xmlns='http://docbook.org/ns/docbook'><subtitle>DICOM PS3.15 2099a - Security</subtitle>"
        + table("table_E.1-1", DOCBOOK_HEADERS, rows)
        + table("table_E.3.10-1", ["Data Element", "Private Creator", "VR", "VM", "Meaning"], safe)
        + "</book>"
    ).encode()


def test_script_parses_docbook() -> None:
    empty = [""] * 10
    rows = [
        ["Private Attributes", "(gggg,eeee) where gggg is odd", "N", "Y", "X", "C", *empty[1:]],
        ["Overlay Data", "(60xx,3000)", "N", "Y", "X", *empty[:-1], "C"],
        ["GPS \u200bAltitude", "(0016,0079)", "N", "N", "X / Z", *empty],
    ]
    generated = build(docbook(rows), "test")
    assert generated["edition"] == "2099a"
    assert generated["columns"]["retain_long_modified_dates"] == "Rtn. Long. Modif. Dates Opt."
    attributes = generated["attributes"]
    assert list(attributes) == ["(0016,0079)", "(60xx,3000)", "private"]
    assert attributes["(0016,0079)"]["name"] == "GPS Altitude"
    assert attributes["(0016,0079)"]["basic"] == "X/Z"
    assert attributes["(60xx,3000)"]["clean_graphics"] == "C"
    assert attributes["private"]["retain_safe_private"] == "C"
    assert generated["safe_private"] == [
        {"creator": "GEMS_ACQU_01", "tag": "(0019,xx2A)", "vr": "FL", "meaning": "Some Factor"}
    ]
    with pytest.raises(SourceError, match="unknown action"):
        build(docbook([["Study Date", "(0008,0020)", "N", "Y", "Q", *empty]]), "test")
