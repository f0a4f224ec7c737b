"""The header writer's own encoder of changed text elements writes exactly what pydicom's writer would."""

from __future__ import annotations

import pytest
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import UID

from pacsflow.anonymize.writer import _plain_text, _single_codec

CASES = [
    (0x00080018, "UI", "2.25.12345"),  # odd length: padded with NUL
    (0x00081155, "UI", MultiValue(UID, ["1.2.3", "1.2.34"])),
    (0x00080020, "DA", "20240131"),
    (0x00080030, "TM", "101010.5"),
    (0x00080050, "SH", ""),
    (0x00081030, "LO", "Étude thoracique"),  # odd length after encoding
    (0x00080008, "CS", MultiValue(str, ["ORIGINAL", "PRIMARY", "AXIAL"])),
    (0x00101010, "AS", "090Y"),
    (0x00204000, "LT", "a long\\text"),
    (0x00400441, "UT", "x" * 70000),  # long VR: a 4-byte length
]


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(("tag", "vr", "value"), CASES)
def test_the_same_bytes_as_pydicom(
    tag: int, vr: str, value: object, charset: str | None, implicit: bool
) -> None:
    element = DataElement(tag, vr, value)
    codec = _single_codec(charset)
    assert codec is not None
    ours = _plain_text(element, codec, implicit)
    if ours is None:  # not encodable in this character set: left to pydicom, which is fine
        assert charset is None
        return
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_data_element(out, element, [charset] if charset else None)
    assert ours == out.getvalue()


def test_several_character_sets_and_numbers_are_left_to_pydicom() -> None:
    assert _single_codec(["", "ISO 2022 IR 87"]) is None
    assert _plain_text(DataElement(0x00100010, "PN", "Doe^John"), "ascii", False) is None
    assert _plain_text(DataElement(0x00180050, "DS", "2.5"), "ascii", False) is None
