"""Reading a DICOM file's elements at every depth straight from its bytes, without building a dataset: the
verifier's reader, independent of the pydicom code that wrote the file, and a fraction of its cost."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: VRs written with two reserved bytes and a 4-byte length in explicit VR
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Float Pixel Data, Double Float Pixel Data, Pixel Data: where a file's pixels begin
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_META_GROUP = 0x0002
_MAX_DEPTH = 64  # deeper nesting is a damaged (or hostile) file, not an image


class Malformed(ValueError):
    """The bytes do not hold a DICOM dataset this reader can follow (truncated, damaged, not DICOM)."""


@dataclass
class RawSet:
    """One dataset as read: each element's VR and value bytes, and each sequence's items."""

    values: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    sequences: dict[int, list[RawSet]] = field(default_factory=dict)

    def text(self, tag: int) -> str:
        """An element's value as text ('' when absent): padding and NULs stripped, multiple values
        kept with their backslashes."""
        found = self.values.get(tag)
        if found is None:
            return ""
        return found[1].decode("latin-1").strip(" \0")

    def texts(self, tag: int) -> list[str]:
        """An element's values (split at backslashes), blank ones left out."""
        return [one.strip(" \0") for one in self.text(tag).split("\\") if one.strip(" \0")]

    def __contains__(self, tag: int) -> bool:
        return tag in self.values or tag in self.sequences


@dataclass
class RawFile:
    """A whole file as read: its file meta, its dataset, and what an identifier could be written in."""

    meta: RawSet
    dataset: RawSet
    has_pixels: bool
    #: the file's bytes but its pixel data (inflated when the file is deflated): searched for leaks
    searched: bytes


def scan(data: bytes) -> RawFile:
    """DATA (a DICOM file, with or without its preamble and file meta) read. Raises Malformed."""
    try:
        return _scan(data)
    except (struct.error, UnicodeDecodeError, zlib.error, RecursionError) as exc:
        raise Malformed(str(exc)) from None


def _scan(data: bytes) -> RawFile:
    start = 132 if data[128:132] == b"DICM" else 0
    meta = RawSet()
    pos = start
    if _looks_like_meta(data, start):
        pos = _Reader(memoryview(data), implicit=False, order="<").dataset(
            meta, start, len(data), depth=0, stop_group=_META_GROUP
        )
    syntax = meta.text(0x00020010)
    buffer = data
    if syntax == _DEFLATED:  # the dataset after the file meta is deflated: read (and searched) inflated
        buffer = data[:pos] + zlib.decompress(data[pos:], -zlib.MAX_WBITS)
    implicit = syntax == _IMPLICIT_LE or (not syntax and not _explicit_at(data, pos))
    reader = _Reader(memoryview(buffer), implicit=implicit, order=">" if syntax == _BIG_ENDIAN else "<")
    dataset = RawSet()
    reader.dataset(dataset, pos, len(buffer), depth=0)
    if reader.pixels_at is None:
        return RawFile(meta, dataset, False, buffer)
    return RawFile(meta, dataset, True, buffer[: reader.pixels_at] + buffer[reader.pixels_end :])


def _looks_like_meta(data: bytes, at: int) -> bool:
    return data[at : at + 2] == b"\x02\x00" and data[at + 4 : at + 6].isalpha()


def _explicit_at(data: bytes, at: int) -> bool:
    return data[at + 4 : at + 6].isalpha() and data[at + 4 : at + 6].isupper()


class _Reader:
    """Walks elements of one encoding; records where the top-level pixel data is."""

    def __init__(self, view: memoryview, *, implicit: bool, order: str) -> None:
        self.view = view
        self.implicit = implicit
        self.tag_format = struct.Struct(order + "HH")
        self.long = struct.Struct(order + "L")
        self.short = struct.Struct(order + "H")
        self.pixels_at: int | None = None
        self.pixels_end = 0

    def dataset(self, into: RawSet, pos: int, end: int, *, depth: int, stop_group: int | None = None) -> int:
        """Read elements from POS until END or an item delimiter (returns the position after it), or
        (with STOP_GROUP) until an element of another group."""
        if depth > _MAX_DEPTH:
            raise Malformed("sequences nested too deep")
        view = self.view
        while pos < end:
            if end - pos < 8:
                raise Malformed("truncated element")
            group, element = self.tag_format.unpack_from(view, pos)
            if stop_group is not None and group != stop_group:
                return pos
            tag = group << 16 | element
            if tag == _ITEM_END:
                return pos + 8
            vr, length, pos = self._header(tag, pos)
            if length == _UNDEFINED:
                if depth == 0 and tag in PIXEL_TAGS:
                    self.pixels_at = pos - (8 if self.implicit else 12)
                    pos = self._skip_fragments(pos, end)
                    self.pixels_end = pos
                    into.values[tag] = (vr, b"")
                    continue
                if vr == "UN" and not self.implicit:
                    # a sequence its writer did not know: its items are implicit VR little endian
                    nested = _Reader(view, implicit=True, order="<")
                    into.sequences[tag], pos = nested.sequence(pos, end, depth)
                    continue
                into.sequences[tag], pos = self.sequence(pos, end, depth)
                continue
            if pos + length > end:
                if depth == 0 and tag in PIXEL_TAGS:  # cut short in its pixels: the header is all there
                    self.pixels_at, self.pixels_end = pos - (8 if self.implicit else 12), end
                    into.values[tag] = (vr, b"")
                    return end
                raise Malformed("an element runs past the end of its data")
            if depth == 0 and tag in PIXEL_TAGS:
                self.pixels_at = pos - (8 if self.implicit else 12)
                self.pixels_end = pos + length
                into.values[tag] = (vr, b"")
            elif vr == "SQ" or (vr == "UN" and self._starts_an_item(pos, length)):
                items, _ = self.sequence(pos, pos + length, depth)
                into.sequences[tag] = items
            else:
                into.values[tag] = (vr, bytes(view[pos : pos + length]))
            pos += length
        return pos

    def _header(self, tag: int, pos: int) -> tuple[str, int, int]:
        """The element's VR, value length and where its value starts."""
        view = self.view
        if self.implicit or tag >> 16 == 0xFFFE:
            return dictionary_vr(tag), self.long.unpack_from(view, pos + 4)[0], pos + 8
        vr = bytes(view[pos + 4 : pos + 6]).decode("ascii")
        if not vr.isalpha():
            raise Malformed("not a VR where explicit VR needs one")
        if vr in _LONG_VRS:
            return vr, self.long.unpack_from(view, pos + 8)[0], pos + 12
        return vr, self.short.unpack_from(view, pos + 6)[0], pos + 8

    def _starts_an_item(self, pos: int, length: int) -> bool:
        """Whether a value of unknown VR (private, implicit VR) is a sequence: it begins with an item."""
        if length < 8:
            return False
        group, element = self.tag_format.unpack_from(self.view, pos)
        return (group << 16 | element) == _ITEM

    def sequence(self, pos: int, end: int, depth: int) -> tuple[list[RawSet], int]:
        """The items from POS to END (a defined length) or to the sequence delimiter."""
        items: list[RawSet] = []
        while pos < end:
            group, element = self.tag_format.unpack_from(self.view, pos)
            tag = group << 16 | element
            length = self.long.unpack_from(self.view, pos + 4)[0]
            pos += 8
            if tag == _SEQUENCE_END:
                return items, pos
            if tag != _ITEM:
                raise Malformed("a sequence holds something other than items")
            item = RawSet()
            if length == _UNDEFINED:
                pos = self.dataset(item, pos, end, depth=depth + 1)
            else:
                if pos + length > end:
                    raise Malformed("an item runs past the end of its sequence")
                self.dataset(item, pos, pos + length, depth=depth + 1)
                pos += length
            items.append(item)
        return items, pos

    def _skip_fragments(self, pos: int, end: int) -> int:
        """Past encapsulated pixel data: its fragments up to the sequence delimiter."""
        while pos + 8 <= end:
            group, element = self.tag_format.unpack_from(self.view, pos)
            length = self.long.unpack_from(self.view, pos + 4)[0]
            pos += 8
            if (group << 16 | element) == _SEQUENCE_END:
                return pos
            pos += length
        return end  # no delimiter: the pixels run to the end of the file


def encapsulated_end(view: memoryview | bytes, pos: int) -> int | None:
    """Where encapsulated pixel data whose first item starts at POS ends (just after its sequence
    delimiter), following its items' lengths; None when they do not lead to a delimiter. Only this tells
    the pixels' end from an element after them: a sequence of undefined length ends the same way."""
    end = len(view)
    while pos + 8 <= end:
        group, element, length = _ITEM_HEADER.unpack_from(view, pos)
        pos += 8
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM or length == _UNDEFINED:
            return None
        pos += length
    return None


_ITEM_HEADER = struct.Struct("<HHL")  # encapsulated pixel data is always little endian
_VRS: dict[int, str] = {}


def dictionary_vr(tag: int) -> str:
    """The VR the data dictionary gives TAG ('UN' for private and unknown ones), for implicit VR."""
    found = _VRS.get(tag)
    if found is None:
        from pydicom.datadict import dictionary_VR

        if tag >> 16 & 1:
            found = "UN"
        else:
            try:
                found = dictionary_VR(tag)
            except KeyError:
                found = "UN"
        if len(_VRS) < 20_000:
            _VRS[tag] = found
    return found
