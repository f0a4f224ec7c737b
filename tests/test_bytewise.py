"""The byte-level de-identifier (anonymize.bytewise) makes the pydicom walk's decisions: on the PHI corpus,
under every option, the same record, the same dataset, the same values taken out; files it does not
follow (other encodings, character sets, damaged ones) go the pydicom way."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from pacsflow.anonymize import bytewise
from pacsflow.anonymize.deidentify import Deidentifier
from pacsflow.anonymize.keys import Keys
from pacsflow.anonymize.mapping import MappingPseudonyms
from pacsflow.anonymize.profile import DEFAULT_OPTIONS, OPTIONS, load_profile
from pacsflow.errors import BadInput
from pacsflow.ledger import Ledger
from pacsflow.ops.deidentifying import deidentify_checked
from tests.phi_corpus import Corpus, encoded_in, write_corpus

KEYS = Keys.from_text("bytewise-secret-0123456789abcdef")
OPTION_SETS = {
    "default": DEFAULT_OPTIONS,
    "basic": (),
    "every option": tuple(name for name in OPTIONS if name != "retain_long_full_dates"),
    "full dates, safe private": ("retain_long_full_dates", "retain_safe_private"),
    "clean descriptors": ("clean_descriptors", "retain_long_modified_dates"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("bytewise") / "in")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    found = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield found
    found.close()


def deidentifier(ledger: Ledger, options: tuple[str, ...], *, allow_burned_in: bool = True) -> Deidentifier:
    pseudonyms = MappingPseudonyms(ledger, KEYS, "ANON-{n:06d}")
    return Deidentifier(load_profile(options), KEYS, pseudonyms, allow_burned_in=allow_burned_in, version="t")


def assert_the_same_either_way(d: Deidentifier, data: bytes, kind: str) -> None:
    """DATA followed byte by byte, with the pydicom walk's record, dataset, file meta, removed and kept
    values."""
    done = bytewise.deidentify(d, data, kind)
    assert done is not None, f"{kind}: not followed byte by byte"
    result, context = done
    original = pydicom.dcmread(io.BytesIO(data))
    record, reference = d.dataset(pydicom.dcmread(io.BytesIO(data)), kind)
    assert result.record == record, kind
    assert context.removed == reference.removed, kind
    # what the result keeps on purpose decides which removed values may recur in it
    kept, kept_there = context.kept | context.kept_as_read(), reference.kept | reference.kept_as_read()
    assert kept == kept_there, (kind, kept ^ kept_there)
    slow = Deidentifier(d.profile, KEYS, d.pseudonyms, allow_burned_in=True, version="t", bytewise=False)
    ours = pydicom.dcmread(io.BytesIO(bytes(result.data)))
    theirs = pydicom.dcmread(io.BytesIO(bytes(slow.apply(data, kind).data)))
    assert ours.file_meta == theirs.file_meta, kind
    assert ours == theirs, kind
    assert ours.PixelData == original.PixelData if "PixelData" in original else "PixelData" not in ours


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_the_same_decisions_as_the_pydicom_walk(
    corpus: Corpus, ledger: Ledger, options: tuple[str, ...]
) -> None:
    d = deidentifier(ledger, options)
    for planted in corpus.files:
        assert_the_same_either_way(d, planted.path.read_bytes(), planted.kind)


def undefined_lengths(ds: Dataset) -> Dataset:
    """DS with every sequence and item of undefined length, as many modalities write them."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    return ds


def test_sequences_of_undefined_length_the_same(corpus: Corpus, ledger: Ledger) -> None:
    d = deidentifier(ledger, OPTION_SETS["every option"])
    for planted in corpus.files:
        data = encoded_in(undefined_lengths(pydicom.dcmread(planted.path)), ExplicitVRLittleEndian)
        read = pydicom.dcmread(io.BytesIO(data))
        assert any(elem.VR == "SQ" and elem.is_undefined_length for elem in read.iterall()), planted.kind
        assert_the_same_either_way(d, data, planted.kind)


def test_refusals_are_the_pydicom_walks(corpus: Corpus, ledger: Ledger) -> None:
    fast = deidentifier(ledger, DEFAULT_OPTIONS, allow_burned_in=False)
    refused = 0
    for planted in corpus.files:
        data = planted.path.read_bytes()
        slow = Deidentifier(fast.profile, KEYS, fast.pseudonyms, version="t", bytewise=False)
        try:
            slow.apply(data, "f")
        except BadInput as expected:
            refused += 1
            with pytest.raises(BadInput) as raised:
                bytewise.apply(fast, data, "f")
            assert str(raised.value) == str(expected)
    assert refused >= 2  # the ultrasound and the secondary capture of the corpus


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    ids=lambda uid: uid.name,
)
def test_other_encodings_go_the_pydicom_way(corpus: Corpus, ledger: Ledger, syntax: str) -> None:
    d = deidentifier(ledger, DEFAULT_OPTIONS)
    for planted in corpus.files:
        data = encoded_in(pydicom.dcmread(planted.path), syntax)
        assert bytewise.apply(d, data, "f") is None
        assert d.apply(data, "f").record.pseudonym  # the pydicom walk does it


def test_character_sets_it_does_not_decode_go_the_pydicom_way(corpus: Corpus, ledger: Ledger) -> None:
    d = deidentifier(ledger, DEFAULT_OPTIONS)
    ds = pydicom.dcmread(corpus.files[0].path)
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    data = encoded_in(ds, ExplicitVRLittleEndian)
    assert bytewise.apply(d, data, "f") is None
    assert d.apply(data, "f").record.pseudonym


def test_damaged_files_go_the_pydicom_way_and_fail_there(corpus: Corpus, ledger: Ledger) -> None:
    d = deidentifier(ledger, DEFAULT_OPTIONS)
    data = corpus.files[0].path.read_bytes()
    for damaged in (data[:1000], data[:-7], data[:132] + b"\xff" * 64):
        assert bytewise.apply(d, damaged, "f") is None
        with pytest.raises(BadInput):
            d.apply(damaged, "f")


def test_a_file_followed_byte_by_byte_never_goes_through_pydicom(
    corpus: Corpus, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = deidentifier(ledger, DEFAULT_OPTIONS)

    def no_pydicom(*args: object, **kwargs: object) -> None:
        raise AssertionError("read with pydicom")

    monkeypatch.setattr(pydicom, "dcmread", no_pydicom)
    ct = next(planted for planted in corpus.files if planted.kind.startswith("ct"))
    assert d.apply(ct.path.read_bytes(), "f").record.pseudonym


def test_an_item_with_its_own_character_set_goes_the_pydicom_way(corpus: Corpus, ledger: Ledger) -> None:
    d = deidentifier(ledger, DEFAULT_OPTIONS)
    ds = pydicom.dcmread(corpus.files[0].path)
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.PatientName = "Müller^Jürgen"
    ds.OtherPatientIDsSequence = [item]
    data = encoded_in(ds, ExplicitVRLittleEndian)
    assert bytewise.apply(d, data, "f") is None
    assert d.apply(data, "f").record.pseudonym


def test_encapsulated_pixels_are_copied_as_they_are(corpus: Corpus, ledger: Ledger) -> None:
    d = deidentifier(ledger, DEFAULT_OPTIONS)
    ds = pydicom.dcmread(next(p for p in corpus.files if p.kind.startswith("ct")).path)
    frames = [b"\xff\xd8fake frame one\xff\xd9", b"\xff\xd8fake frame two!\xff\xd9"]
    ds.PixelData = encapsulate(frames)
    ds.NumberOfFrames = 2
    ds["PixelData"].VR = "OB"
    data = encoded_in(ds, JPEGBaseline8Bit)
    assert_the_same_either_way(d, data, "encapsulated")
    done = bytewise.apply(d, data, "f")
    assert done is not None
    out = pydicom.dcmread(io.BytesIO(bytes(done.data)))
    assert out.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert out.PixelData == ds.PixelData
    assert out.PatientID != ds.PatientID


def test_elements_after_encapsulated_pixels_are_walked_on_both_ways(corpus: Corpus, ledger: Ledger) -> None:
    # a sequence of undefined length after the pixels ends with the same delimiter as they do: only the
    # pixels' items tell where they end, and what follows them must be read and de-identified
    ds = pydicom.dcmread(next(p for p in corpus.files if p.kind.startswith("ct")).path)
    ds.PixelData = encapsulate([b"\xff\xd8fake frame\xff\xd9"])
    ds["PixelData"].VR = "OB"
    signature = Dataset()
    signature.PatientAddress = "12 Elm Street, Springfield"
    signature.PatientBirthDate = "19620314"
    ds.DigitalSignaturesSequence = [signature]
    ds["DigitalSignaturesSequence"].is_undefined_length = True
    data = encoded_in(ds, JPEGBaseline8Bit)
    assert data.index(b"12 Elm Street") > data.index(b"fake frame")
    fast = deidentifier(ledger, DEFAULT_OPTIONS)
    slow = Deidentifier(
        fast.profile, KEYS, fast.pseudonyms, allow_burned_in=True, version="t", bytewise=False
    )
    assert bytewise.apply(fast, data, "f") is None  # the pydicom walk reads the whole file
    for d in (fast, slow):
        result = deidentify_checked(d, data, "f")
        assert b"12 Elm Street" not in result.data
        assert b"19620314" not in result.data
        assert pydicom.dcmread(io.BytesIO(bytes(result.data))).PixelData == ds.PixelData


@pytest.mark.parametrize("allow_burned_in", [False, True])
def test_a_removed_value_the_result_keeps_elsewhere_is_no_leak(
    corpus: Corpus, ledger: Ledger, allow_burned_in: bool
) -> None:
    # the series description is removed, the modality kept: the same word stays, and the file is fine
    # either way (it was refused or not depending on what the pydicom walk had decoded before)
    ds = pydicom.dcmread(next(p for p in corpus.files if p.kind == "rtstruct").path)
    ds.SeriesDescription = ds.Modality = "RTSTRUCT"
    data = encoded_in(ds, ExplicitVRLittleEndian)
    fast = deidentifier(ledger, DEFAULT_OPTIONS, allow_burned_in=allow_burned_in)
    slow = Deidentifier(
        fast.profile, KEYS, fast.pseudonyms, allow_burned_in=allow_burned_in, version="t", bytewise=False
    )
    assert bytewise.apply(fast, data, "f") is not None
    for d in (fast, slow):
        out = pydicom.dcmread(io.BytesIO(bytes(deidentify_checked(d, data, "f").data)))
        assert out.Modality == "RTSTRUCT"
        assert "SeriesDescription" not in out or out.SeriesDescription != "RTSTRUCT"


def test_several_values_give_the_same_pseudonyms_either_way(corpus: Corpus, ledger: Ledger) -> None:
    ds = pydicom.dcmread(next(p for p in corpus.files if p.kind.startswith("ct")).path)
    ds.AccessionNumber = ["ACC12345", "ACC67890"]
    ds.PatientName = ["Smithson^Johnathan", "Doe^Jane"]
    data = encoded_in(ds, ExplicitVRLittleEndian)
    fast = deidentifier(ledger, DEFAULT_OPTIONS)
    slow = Deidentifier(
        fast.profile, KEYS, fast.pseudonyms, allow_burned_in=True, version="t", bytewise=False
    )
    done = bytewise.apply(fast, data, "f")
    assert done is not None
    assert done.record == slow.apply(data, "f").record
    assert done.record.patient_name == "Smithson^Johnathan\\Doe^Jane"


def test_a_value_written_with_the_wrong_vr_is_removed_either_way(corpus: Corpus, ledger: Ledger) -> None:
    # a date written as OB cannot be shifted as a date: kept as it is, it would be the original date
    ds = pydicom.dcmread(next(p for p in corpus.files if p.kind.startswith("ct")).path)
    ds.add_new(0x00080022, "OB", b"20191231")  # AcquisitionDate
    ds.add_new(0x00081032, "OB", b"not a sequence!!")  # ProcedureCodeSequence as bytes: not walked
    data = encoded_in(ds, ExplicitVRLittleEndian)
    fast = deidentifier(ledger, DEFAULT_OPTIONS)
    slow = Deidentifier(
        fast.profile, KEYS, fast.pseudonyms, allow_burned_in=True, version="t", bytewise=False
    )
    assert bytewise.apply(fast, data, "f") is not None
    for d in (fast, slow):
        result = deidentify_checked(d, data, "f")
        out = pydicom.dcmread(io.BytesIO(bytes(result.data)))
        assert 0x00080022 not in out and 0x00081032 not in out
        assert b"20191231" not in result.data
        assert out.Modality == ds.Modality  # what the profile keeps stays, whatever its neighbours


def test_an_unknown_vr_is_a_clear_error(corpus: Corpus, ledger: Ledger) -> None:
    data = bytearray(corpus.files[0].path.read_bytes())
    at = data.index(b"\x08\x00\x60\x00CS")  # Modality
    data[at + 4 : at + 6] = b"XX"
    d = deidentifier(ledger, DEFAULT_OPTIONS)
    assert bytewise.apply(d, bytes(data), "f") is None
    with pytest.raises(BadInput, match="not readable as DICOM"):
        d.apply(bytes(data), "f")
