"""The verifier's reader (anonymize.rawscan) finds every element pydicom finds, at every depth, in every
transfer syntax, and reads what pydicom cannot be asked to keep apart (UN sequences, damaged files)."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacsflow.anonymize.rawscan import PIXEL_TAGS, Malformed, RawSet, scan
from pacsflow.anonymize.verify import Verifier
from tests.phi_corpus import Corpus, encoded_in, write_corpus

ITEM = b"\xfe\xff\x00\xe0"
SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("rawscan") / "in")


def encoded(path: Path, syntax: UID) -> bytes:
    return encoded_in(pydicom.dcmread(path), syntax)


def pydicom_elements(ds: Dataset, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], bytes | None]:
    """Every element pydicom reads, keyed by where it is (sequence tags and item numbers), with its value
    bytes as read (None for a sequence)."""
    found: dict[tuple[Any, ...], bytes | None] = {}
    for tag in ds.keys():  # noqa: SIM118 - the elements as read, not decoded
        raw = ds.get_item(tag)
        if int(tag) in PIXEL_TAGS and not path:
            continue
        if raw.VR == "SQ" or ds[tag].VR == "SQ":  # implicit VR: a sequence is known once converted
            found[(*path, int(tag))] = None
            for number, item in enumerate(ds[tag].value):
                found.update(pydicom_elements(item, (*path, int(tag), number)))
        else:
            found[(*path, int(tag))] = raw.value if isinstance(raw.value, bytes) else None
    return found


def raw_elements(dataset: RawSet, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], bytes | None]:
    found: dict[tuple[Any, ...], bytes | None] = {}
    for tag, (_, value) in dataset.values.items():
        if not (tag in PIXEL_TAGS and not path):
            found[(*path, tag)] = value
    for tag, items in dataset.sequences.items():
        found[(*path, tag)] = None
        for number, item in enumerate(items):
            found.update(raw_elements(item, (*path, tag, number)))
    return found


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda uid: uid.name)
def test_every_element_pydicom_reads_is_read_with_the_same_bytes(corpus: Corpus, syntax: UID) -> None:
    for planted in corpus.files:
        data = encoded(planted.path, syntax)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        read = scan(data)
        theirs, ours = pydicom_elements(ds), raw_elements(read.dataset)
        assert not set(theirs) - set(ours), (planted.kind, set(theirs) - set(ours))
        # more than pydicom only inside a private element it leaves as bytes (implicit VR: no VR to say
        # that it is a sequence), which begin with an item: read as the sequence it is
        deeper = {key[: len(key) - 2] for key in set(ours) - set(theirs)}
        assert all(key[-1] >> 16 & 1 and (theirs[key] or b"")[:4] == ITEM for key in deeper), deeper
        differing = [
            key
            for key, value in theirs.items()
            if value is not None and key not in deeper and ours[key] != value
        ]
        assert not differing, (planted.kind, differing)
        assert read.meta.text(0x00020010) == syntax
        assert read.has_pixels == ("PixelData" in ds or planted.kind in ("ct", "us", "sc"))


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda uid: uid.name)
def test_the_searched_bytes_hold_the_header_but_not_the_pixels(corpus: Corpus, syntax: UID) -> None:
    planted = next(f for f in corpus.files if f.kind == "ct")
    data = encoded(planted.path, syntax)
    read = scan(data)
    pixels = pydicom.dcmread(io.BytesIO(data)).PixelData
    assert planted.patient.encode() in read.searched  # inflated when the file is deflated
    assert len(read.searched) < len(pixels)  # the header alone is a few KB


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if vr in (b"OB", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _dataset_with_an_un_sequence() -> bytes:
    """A private sequence written as UN with an undefined length (its items implicit VR, as the standard
    says), holding a patient's name; no preamble, no file meta."""
    name = b"Doe^John"
    item = struct.pack("<HHL", 0x0010, 0x0010, len(name)) + name
    un_value = (
        struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    return (
        _element(0x0008, 0x0018, b"UI", b"1.2.3.4\0")
        + _element(0x0009, 0x0010, b"LO", b"ACME 1.0")
        + struct.pack("<HH2sHL", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF)
        + un_value
    )


def test_an_undefined_length_un_sequence_is_read_as_implicit_vr_items() -> None:
    read = scan(_dataset_with_an_un_sequence())
    items = read.dataset.sequences[0x00091001]
    assert [item.text(0x00100010) for item in items] == ["Doe^John"]
    assert read.dataset.text(0x00080018) == "1.2.3.4"


def test_the_verifier_counts_a_private_un_sequence_as_private() -> None:
    checked = Verifier().check(_dataset_with_an_un_sequence(), "f")
    assert checked is not None
    assert "1 private attributes left" in checked.problems


@pytest.mark.parametrize("cut", [140, 200, 400])
def test_a_file_cut_short_in_its_header_is_malformed(corpus: Corpus, cut: int) -> None:
    data = encoded(corpus.files[0].path, ExplicitVRLittleEndian)
    with pytest.raises(Malformed):
        scan(data[:cut])
    assert Verifier().check(data[:cut], "f") is None


def test_a_file_cut_short_in_its_pixels_keeps_its_header(corpus: Corpus) -> None:
    planted = next(f for f in corpus.files if f.kind == "ct")
    data = encoded(planted.path, ExplicitVRLittleEndian)
    read = scan(data[:-100])
    assert read.has_pixels
    assert read.dataset.text(0x00100020) == planted.patient


def test_not_dicom_is_not_checked() -> None:
    assert Verifier().check(b"PK\x03\x04" + b"\x00" * 300, "f") is None
