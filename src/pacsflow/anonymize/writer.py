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
    meta = _meta_bytes(ds.file_meta)
    if meta is None:
        write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    else:
        out.write(meta)
    out.is_implicit_VR = implicit
    encodings = ds.get("SpecificCharacterSet")
    codec = _single_codec(encodings)
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # group lengths are retired (PS3.5 7.2)
        elem = ds.get_item(tag)
        if getattr(elem, "is_raw", False) and elem.length != _UNDEFINED and elem.value_tell:
            start = elem.value_tell - (8 if implicit or elem.VR not in _LONG_VRS else 12)
            # copied only from where the source holds this very element (a value put in, not read, is not)
            if start >= 0 and source[start : start + 4] == _tag_bytes(tag):
                out.write(source[start : elem.value_tell + elem.length])
                continue
        text = _plain_text(elem, codec, implicit) if codec is not None else None
        if text is not None:
            out.write(text)
            continue
        write_data_element(out, elem, encodings)
    return out.getvalue()


#: the text VRs _plain_text writes: a value is its strings joined by backslashes, padded to even length
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
#: one character set, one Python codec; ISO 2022 (several sets, escape sequences) is left to pydicom
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _single_codec(encodings: Any) -> str | None:
    if encodings is None:
        return "ascii"
    values = [encodings] if isinstance(encodings, str) else list(encodings)
    if len(values) > 1:
        return None
    return _CODECS.get(str(values[0]).strip() if values else "")


def _plain_text(elem: Any, codec: str, implicit: bool) -> bytes | None:
    """A changed text element (a new UID, a shifted date, an emptied name) encoded the way pydicom
    would, without its general machinery (most of a header's writing time); None for anything else:
    numbers, names, sequences, binary VRs, values that are not plain strings."""
    vr = elem.VR
    if vr not in _TEXT_VRS:
        return None
    value = elem.value
    if value is None or value == "":
        strings: list[str] = []
    elif isinstance(value, str):
        strings = [value]
    elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        strings = list(value)
        if not all(isinstance(one, str) for one in strings):
            return None
    else:
        return None
    try:
        data = "\\".join(strings).encode(codec)
    except UnicodeEncodeError:
        return None
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    tag = int(elem.tag)
    if implicit:
        return _tag_bytes(tag) + len(data).to_bytes(4, "little") + data
    if vr in _LONG_VRS:
        return _tag_bytes(tag) + vr.encode() + b"\0\0" + len(data).to_bytes(4, "little") + data
    if len(data) > 0xFFFF:
        return None
    return _tag_bytes(tag) + vr.encode() + len(data).to_bytes(2, "little") + data


def _tag_bytes(tag: int) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")


#: the file meta elements _meta_bytes writes itself, with their VRs and padding (PS3.10 7.1)
_META = {
    0x00020001: ("OB", b"\0"),
    0x00020002: ("UI", b"\0"),
    0x00020003: ("UI", b"\0"),
    0x00020010: ("UI", b"\0"),
    0x00020012: ("UI", b"\0"),
    0x00020013: ("SH", b" "),
}
_REQUIRED_META = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012)


def _meta_bytes(meta: Any) -> bytes | None:
    """The file meta group as PS3.10 writes it (explicit VR little endian, with its group length), when it
    holds only the usual elements; None otherwise (pydicom's writer then checks and writes it)."""
    tags = {int(tag) for tag in meta.keys()} - {0x00020000}  # noqa: SIM118 - tags, not decoded elements
    if not tags <= _META.keys() or not all(tag in tags for tag in _REQUIRED_META):
        return None
    values = {}
    for tag in tags:
        value = meta[tag].value
        values[tag] = value if isinstance(value, bytes) else str(value).encode("ascii")
    return meta_group(values)


def meta_group(values: dict[int, bytes]) -> bytes:
    """The file meta group of VALUES (tags of _META, their values as bytes) with its group length."""
    body = bytearray()
    for tag in sorted(values):
        vr, pad = _META[tag]
        raw = values[tag]
        if len(raw) % 2:
            raw += pad
        body += _tag_bytes(tag)
        body += vr.encode()
        if vr == "OB":
            body += b"\0\0" + len(raw).to_bytes(4, "little")
        else:
            body += len(raw).to_bytes(2, "little")
        body += raw
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(body).to_bytes(4, "little")
    return group_length + bytes(body)
