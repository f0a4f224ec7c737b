"""Writing a de-identified header fast: elements left as read are copied as bytes from the source file;
only those the profile changed go through pydicom's encoder (half the time of re-encoding them all)."""

from __future__ import annotations

from typing import Any

#: explicit VRs whose element header is 12 bytes (a 4-byte length after 2 reserved bytes)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_UNDEFINED = 0xFFFFFFFF


def write_header(ds: Any, source: bytes) -> bytes | None:
    """DS (read from SOURCE up to its pixel data) as a Part 10 file without its pixel data, or None when
    it cannot be written this way (its character set changed: then every text must be encoded anew)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element, write_file_meta_info

    if ds.original_character_set != ds._character_set:
        return None
    implicit, little = ds.original_encoding
    if not little or implicit is None:
        return None
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(ds.preamble or b"\0" * 128)
    out.write(b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    out.is_implicit_VR = implicit
    encodings = ds.get("SpecificCharacterSet")
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # group lengths are retired (PS3.5 7.2)
        elem = ds.get_item(tag)
        if getattr(elem, "is_raw", False) and elem.length != _UNDEFINED and elem.value_tell is not None:
            header = 8 if implicit or elem.VR not in _LONG_VRS else 12
            out.write(source[elem.value_tell - header : elem.value_tell + elem.length])
        else:
            write_data_element(out, elem, encodings)
    return out.getvalue()
