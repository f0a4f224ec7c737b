"""De-identifying an explicit VR little endian file straight from its bytes: the same decisions as the
pydicom walk in deidentify.Deidentifier, without building a dataset (a fifth of its cost). A file this
reader does not follow (another encoding, character set, a UN element, anything damaged) is left to the
pydicom walk, which reads everything and says what is wrong."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacsflow.anonymize import deidentify as rules
from pacsflow.anonymize.dates import shift_date
from pacsflow.anonymize.rawscan import (
    _ITEM,
    _ITEM_END,
    _LONG_VRS,
    _MAX_DEPTH,
    _SEQUENCE_END,
    _UNDEFINED,
    PIXEL_TAGS,
    encapsulated_end,
)
from pacsflow.anonymize.search import encodings_for
from pacsflow.anonymize.writer import _META, _REQUIRED_META, meta_group

if TYPE_CHECKING:
    from pacsflow.anonymize.deidentify import Deidentified, Deidentifier

#: transfer syntaxes whose dataset is not explicit VR little endian as written (implicit, big, deflated)
_OTHER_ENCODINGS = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
#: single-valued text: a backslash is a character, not a separator
_ONE_VALUE = frozenset({"LT", "ST", "UT", "UR"})
#: text VRs (decoded with the file's character set)
_TEXT = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
#: the VRs of PS3.5 6.2: anything else goes the pydicom way (which says the file cannot be read)
_KNOWN_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD"})
_KNOWN_VRS |= {"OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL"}
_KNOWN_VRS |= {"UN", "UR", "US", "UT", "UV"}
#: the character sets read here, as pydicom decodes them (no declared set: ISO 8859-1, as pydicom does)
_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_SPECIFIC_CHARACTER_SET = 0x00080005
_TAG = struct.Struct("<HH")
_ITEM_HEADER = struct.Struct("<HHL")
_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<L")


class Unsupported(Exception):
    """Not a file this reader follows: the pydicom walk takes it."""


class _El:
    """One element as read: where its bytes are, and a sequence's items."""

    __slots__ = ("end", "items", "start", "tag", "value", "vr")

    def __init__(self, tag: int, vr: str, start: int, value: int, end: int, items: Any = None) -> None:
        self.tag, self.vr, self.start, self.value, self.end, self.items = tag, vr, start, value, end, items


@dataclass
class _Text:
    """An element given new values; a cleaned one may be cut again once the walk is over."""

    tag: int
    vr: str
    value: list[str]


@dataclass
class _Binary:
    tag: int
    vr: str
    data: bytes


@dataclass
class _Sequence:
    tag: int
    items: list[list[Any]]


@dataclass
class _Encoded:
    """An element already encoded (the de-identification marks)."""

    tag: int
    data: bytes


class _Copied:
    """An element kept as the file holds it."""

    __slots__ = ("el", "tag")

    def __init__(self, el: _El) -> None:
        self.tag, self.el = el.tag, el


# -- reading -----------------------------------------------------------------------------------


def _elements(
    view: memoryview, pos: int, end: int, depth: int, *, top: bool, delimited: bool
) -> tuple[list[_El], int]:
    """The elements from POS: to END, to an item delimiter (DELIMITED), or (TOP) to the pixel data."""
    if depth > _MAX_DEPTH:
        raise Unsupported
    found: list[_El] = []
    while pos < end:
        if end - pos < 8:
            raise Unsupported
        group, element = _TAG.unpack_from(view, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not delimited:
                raise Unsupported
            return found, pos + 8
        if top and tag in PIXEL_TAGS:
            return found, pos
        vr, length, start = _read_header(view, pos)
        if vr == "UN" or (depth and tag == _SPECIFIC_CHARACTER_SET):
            # what pydicom makes of a UN element (a known VR, a sequence) is pydicom's business; an item
            # with a character set of its own is decoded with it (pydicom does that too)
            raise Unsupported
        if vr == "SQ":
            items, after = _items(view, start, length, end, depth)
            found.append(_El(tag, vr, pos, start, after, items))
            pos = after
            continue
        if length == _UNDEFINED or start + length > end:
            raise Unsupported
        found.append(_El(tag, vr, pos, start, start + length))
        pos = start + length
    if delimited:
        raise Unsupported
    return found, pos


def _read_header(view: memoryview, pos: int) -> tuple[str, int, int]:
    """An explicit VR element's VR, value length and where its value starts."""
    vr_bytes = bytes(view[pos + 4 : pos + 6])
    if not (vr_bytes.isalpha() and vr_bytes.isupper()):
        raise Unsupported
    vr = vr_bytes.decode("ascii")
    if vr not in _KNOWN_VRS:
        raise Unsupported
    if vr in _LONG_VRS:
        return vr, _LONG.unpack_from(view, pos + 8)[0], pos + 12
    return vr, _SHORT.unpack_from(view, pos + 6)[0], pos + 8


def _items(view: memoryview, pos: int, length: int, end: int, depth: int) -> tuple[list[list[_El]], int]:
    delimited = length == _UNDEFINED
    stop = end if delimited else pos + length
    if stop > end:
        raise Unsupported
    items: list[list[_El]] = []
    while pos < stop:
        if stop - pos < 8:
            raise Unsupported
        group, element, size = _ITEM_HEADER.unpack_from(view, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END and delimited:
            return items, pos
        if tag != _ITEM:
            raise Unsupported
        if size == _UNDEFINED:
            item, pos = _elements(view, pos, stop, depth + 1, top=False, delimited=True)
        else:
            if pos + size > stop:
                raise Unsupported
            item, _ = _elements(view, pos, pos + size, depth + 1, top=False, delimited=False)
            pos += size
        items.append(item)
    if delimited:
        raise Unsupported
    return items, pos


class _File:
    """A file as read here: its file meta, top-level elements, pixel data (the tail) and codec."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 140 or data[128:132] != b"DICM":
            raise Unsupported
        view = self.view = memoryview(data)
        meta, pos = _meta_elements(view)
        self.meta = {el.tag: el for el in meta}
        syntax = self.text(self.meta.get(0x00020010))
        if not syntax or syntax in _OTHER_ENCODINGS:
            raise Unsupported
        self.elements, pixels_at = _elements(view, pos, len(data), 0, top=True, delimited=False)
        self.tail = _tail(view, pixels_at)
        self.top = {el.tag: el for el in self.elements}
        declared = self.text(self.top.get(_SPECIFIC_CHARACTER_SET))
        codec = _CODECS.get(declared)
        if codec is None:
            raise Unsupported  # several sets, ISO 2022 escapes: pydicom's decoding
        self.declared, self.codec = declared, codec

    def text(self, el: _El | None) -> str:
        """An ASCII value (a UID, a code) with its padding stripped; '' when absent."""
        if el is None:
            return ""
        return bytes(self.view[el.value : el.end]).decode("latin-1").strip("\0 ")

    def strings(self, el: _El) -> list[str]:
        """An element's text values as pydicom gives them: split at backslashes, trailing padding gone."""
        try:
            text = bytes(self.view[el.value : el.end]).decode(self.codec)
        except UnicodeDecodeError:
            raise Unsupported from None  # pydicom's replacement characters and warnings
        if not text:
            return []
        if el.vr in _ONE_VALUE:
            return [text.rstrip(" \0")]
        return [one.rstrip(" \0") for one in text.split("\\")]

    def values(self, el: _El) -> list[str]:
        """Text values, or numbers as text (a binary VR), or nothing (bytes, tags)."""
        code = _NUMBERS.get(el.vr)
        if el.vr == "AT":  # as pydicom shows a tag
            pairs = struct.iter_unpack("<HH", self.view[el.value : el.end - (el.end - el.value) % 4])
            return [f"({group:04X},{element:04X})" for group, element in pairs]
        if code is None:
            return self.strings(el) if el.vr in _TEXT else []
        size = struct.calcsize(code)
        count = (el.end - el.value) // size
        return [str(one) for one in struct.unpack_from(f"<{count}{code}", self.view, el.value)]

    def raw(self, el: _El) -> bytes:
        return bytes(self.view[el.value : el.end])


def _meta_elements(view: memoryview) -> tuple[list[_El], int]:
    """The group 0002 elements after the preamble (explicit VR little endian, as PS3.10 has them)."""
    found: list[_El] = []
    pos, end = 132, len(view)
    while pos + 8 <= end and _TAG.unpack_from(view, pos)[0] == 0x0002:
        element = _TAG.unpack_from(view, pos)[1]
        vr, length, start = _read_header(view, pos)
        if length == _UNDEFINED or start + length > end:
            raise Unsupported
        found.append(_El(0x00020000 | element, vr, pos, start, start + length))
        pos = start + length
    return found, pos


def _tail(view: memoryview, at: int) -> memoryview:
    """The pixel data element to the end of the file, when it ends the file (copied as it is)."""
    end = len(view)
    if at == end:
        return view[end:]
    if _TAG.unpack_from(view, at) != (0x7FE0, 0x0010) or end - at < 12:
        raise Unsupported  # float pixel data, or a header cut short: the pydicom walk
    length = _LONG.unpack_from(view, at + 8)[0]
    if length == _UNDEFINED:
        if encapsulated_end(view, at + 12) != end:
            raise Unsupported  # elements after the pixels: the pydicom walk reads and walks them
        return view[at:]
    if at + 12 + length != end:
        raise Unsupported  # cut short, or something after the pixels
    return view[at:]


class _Values:
    """The top-level values by keyword, as a pydicom dataset's get() gives them (text)."""

    def __init__(self, file: _File, final: dict[int, Any] | None = None) -> None:
        self.file = file
        self.final = final

    def get(self, keyword: str, default: Any = None) -> Any:
        tag = _tag_for(keyword)
        if self.final is not None:
            node = self.final.get(tag)
            if node is None:
                return default
            if isinstance(node, _Text):
                values = node.value
            elif isinstance(node, _Copied):
                values = self.file.strings(node.el)
            else:
                return default
        else:
            el = self.file.top.get(tag)
            if el is None:
                return default
            values = self.file.strings(el)
        if not values:
            return ""
        return values[0] if len(values) == 1 else values

    def __contains__(self, keyword: str) -> bool:
        return _tag_for(keyword) in self.file.top


_TAGS: dict[str, int] = {}


def _tag_for(keyword: str) -> int:
    found = _TAGS.get(keyword)
    if found is None:
        from pydicom.datadict import tag_for_keyword

        found = _TAGS[keyword] = int(tag_for_keyword(keyword) or 0)
    return found


# -- de-identifying ------------------------------------------------------------------------------


def apply(d: Deidentifier, data: bytes, where: str) -> Deidentified | None:
    """DATA de-identified by D's rules, or None when this reader does not follow the file (the pydicom
    walk then takes it). Raises BadInput as Deidentifier.apply does."""
    done = deidentify(d, data, where)
    return None if done is None else done[0]


def deidentify(d: Deidentifier, data: bytes, where: str) -> tuple[Deidentified, Any] | None:
    """As apply, with the walk's context (the values removed and kept: the tests compare them)."""
    from pacsflow.anonymize.deidentify import Deidentified
    from pacsflow.errors import BadInput

    try:
        file = _File(data)
    except (Unsupported, struct.error, ValueError):
        return None
    values = _Values(file)
    if "SOPInstanceUID" not in values or "StudyInstanceUID" not in values:
        return None  # the pydicom walk says what it is
    try:
        original, patient, shift, context = d.begin(values, where)
        walk = _Walk(d, file, context)
        top = walk.dataset(file.elements)
        context.kept_as_read = lambda: walk.copied_values(top)
        d._clean_texts(context)
        final = {node.tag: node for node in top}
        for tag, encoded in _marks(d).items():
            final[tag] = _Encoded(tag, encoded)
        context.kept_as_read = lambda: walk.copied_values(final.values())
        meta = _meta(file, final)
        body = bytearray()
        for tag in sorted(final):
            _encode(final[tag], file, body)
    except BadInput:
        raise  # burned-in text, no PatientID: the same refusal either way
    except (Unsupported, struct.error, ValueError, IndexError, KeyError):
        return None  # the pydicom walk reads it again, and says what is wrong with it
    header = b"\0" * 128 + b"DICM" + meta + bytes(body)
    record = d._record(original, _Values(file, final), patient, shift=shift, already=context.ours)
    d._check_leaks(header, encodings_for(file.declared), context, where)
    return Deidentified(header + file.tail if file.tail else header, record), context


class _Walk:
    """One file's elements under D's rules: what each becomes (copied, new values, gone)."""

    def __init__(self, d: Deidentifier, file: _File, context: Any) -> None:
        self.d, self.file, self.context = d, file, context

    def dataset(self, elements: list[_El]) -> list[Any]:
        d, file, context = self.d, self.file, self.context
        out: list[Any] = []
        creators: list[_El] = []
        private_kept: set[tuple[int, int]] = set()
        by_tag: dict[int, _El] | None = None
        for el in elements:
            tag = el.tag
            group, element = tag >> 16, tag & 0xFFFF
            if element == 0 and group != 0x0002:
                continue  # group lengths: retired, and wrong after any change
            if group & 1:
                if 0x0010 <= element <= 0x00FF:
                    creators.append(el)
                    continue
                if element >= 0x1000:
                    if by_tag is None:
                        by_tag = {one.tag: one for one in elements}
                    creator = by_tag.get(group << 16 | element >> 8)
                    text = "\\".join(file.strings(creator)) if creator is not None else None
                    if d.keeps_private(text, group, element):
                        private_kept.add((group, element >> 8))
                        if el.vr == "SQ":  # its items walked (at the same depth, as the pydicom walk)
                            out.append(_Sequence(tag, [self.dataset(item) for item in el.items]))
                        else:
                            out.append(_Copied(el))
                        continue
                self._note(el.vr, self._values(el))
                continue
            vr = el.vr
            action = d._action(tag, vr, context)
            if vr != "SQ" and d._untouched(file.raw(el), tag, vr, action, context):
                out.append(_Copied(el))
                continue
            node = self._apply(el, action)
            if node is not None:
                out.append(node)
        for creator in creators:
            if (creator.tag >> 16, creator.tag & 0xFF) in private_kept:
                out.append(_Copied(creator))
        out = self._without_empty_overlays(out)
        out.sort(key=lambda node: node.tag)
        return out

    def _values(self, el: _El) -> list[str]:
        return [] if el.vr == "SQ" else self.file.values(el)

    def copied_values(self, nodes: Any) -> set[str]:
        """The values of the elements copied as read, at every depth (context.kept_as_read)."""
        found: set[str] = set()
        for node in nodes:
            if isinstance(node, _Copied):
                values = self.file.values(node.el)
                found.update(values)
                if node.el.vr == "PN":
                    found.update(group for value in values for group in value.split("="))
            elif isinstance(node, _Sequence):
                for item in node.items:
                    found |= self.copied_values(item)
        return found

    def _note(self, vr: str, values: list[str]) -> None:
        self.context.note_removed(vr, values)

    def _note_sequence(self, el: _El) -> None:
        for item in el.items:
            for inner in item:
                if inner.vr == "SQ":
                    self._note_sequence(inner)
                else:
                    self._note(inner.vr, self._values(inner))

    def _keep(self, vr: str, values: list[str]) -> None:
        kept = self.context.kept
        if not values and vr in rules._TEXT_VRS:
            kept.add("")  # as the pydicom walk remembers an empty text
            return
        for value in values:
            kept.add(value)
            if vr == "PN":
                kept.update(value.split("="))  # a name's groups

    def _apply(self, el: _El, action: str) -> Any:
        d, context, tag, vr = self.d, self.context, el.tag, el.vr
        if vr == "SQ":
            if action == "X":
                self._note_sequence(el)
                return None
            if action == "Z":
                self._note_sequence(el)
                return _Sequence(tag, [])
            context.depth += 1
            try:
                return _Sequence(tag, [self.dataset(item) for item in el.items])
            finally:
                context.depth -= 1
        if vr not in _TEXT:
            return self._binary(el, action)
        old = self.file.strings(el)
        if action == "K":
            node: Any = None
            if tag == 0x00101010:  # PatientAge kept (patient characteristics): 90 and over as 90
                capped = rules._cap_age("\\".join(old))
                if [capped] != old:
                    node = _Text(tag, vr, [capped])
                    old = [capped]
            elif vr in rules._DESCRIBING_VRS and context.identifiers and old:
                cleaned = [rules._cut(one, context.identifiers) for one in old]
                if cleaned != old:
                    self._note(vr, old)
                    node, old = _Text(tag, vr, cleaned), cleaned
            self._keep(vr, old)
            return node or _Copied(el)
        if action == "X":
            self._note(vr, old)
            return None
        cleaned_later = False
        if action == "P":
            new = [context.patient.pseudonym]
        elif vr == "UI" and context.ours and action in ("U", "U?", "D"):
            new = old
        elif action == "A":
            joined = "\\".join(old)
            new = [d.keys.accession(joined)] if joined.strip() and not context.ours else old
        elif action == "Z":
            new = []
        elif action == "D":
            new = self._dummy(vr, old)
        elif action in ("U", "U?"):
            new = [d.uid(one) for one in old] if old and old != [""] else old
        elif action == "C":
            new = self._clean(vr, old)
            cleaned_later = vr in rules._DESCRIBING_VRS
        else:  # an action code this pacsflow does not know: remove rather than guess
            self._note(vr, old)
            return None
        if new != old:
            self._note(vr, old)
            self._keep(vr, new)
        else:
            self._keep(vr, old)
            if not cleaned_later:
                return _Copied(el)
        node = _Text(tag, vr, new)
        if cleaned_later:
            context.cleaned.append(node)
        return node

    def _dummy(self, vr: str, old: list[str]) -> list[str]:
        if vr == "UI":
            return [self.d.uid(one) for one in old] if old and old != [""] else old
        if vr in rules._DUMMY:
            return [rules._DUMMY[vr]]
        return [rules._DUMMY_TEXT[: rules._MAX_LENGTH.get(vr, 64)]]

    def _clean(self, vr: str, old: list[str]) -> list[str]:
        if vr in ("DA", "DT"):
            shift = self.context.shift
            return [shift_date(one, shift) for one in old] if self.d.profile.shifts_dates and shift else old
        if vr == "TM" or vr not in rules._TEXT_VRS:
            return old
        if vr == "PN":
            return []
        return [rules._cut(one, self.context.identifiers) for one in old]

    def _binary(self, el: _El, action: str) -> Any:
        """Numbers, bytes and tags: kept, emptied, zeroed or removed, as the pydicom walk does."""
        if action in ("K", "C", "U?"):
            self._keep(el.vr, self.file.values(el))
            return _Copied(el)
        if action == "X":
            return None
        code = _NUMBERS.get(el.vr)
        if action == "Z":
            new = b""
        elif action == "D":
            new = struct.pack("<" + code, 0) if code is not None else b""
        else:  # a pseudonym or a UID for a binary value: no file should ask; the pydicom walk decides
            raise Unsupported
        if new == self.file.raw(el):
            self._keep(el.vr, self.file.values(el))
            return _Copied(el)
        if new:
            self.context.kept.add("0")
        return _Binary(el.tag, el.vr, new)

    def _without_empty_overlays(self, out: list[Any]) -> list[Any]:
        """An overlay's elements without its data (removed by the profile) go too."""
        groups = {node.tag >> 16 for node in out if 0x6000 <= node.tag >> 16 <= 0x601E}
        if not groups:
            return out
        tags = {node.tag for node in out}
        emptied = {
            g for g in groups if g % 2 == 0 and (g << 16 | 0x0010) in tags and (g << 16 | 0x3000) not in tags
        }
        if not emptied:
            return out
        kept = []
        for node in out:
            if node.tag >> 16 in emptied:
                if isinstance(node, _Copied):
                    self._note(node.el.vr, self._values(node.el))
                elif isinstance(node, _Text):
                    self._note(node.vr, node.value)
                continue
            kept.append(node)
        return kept


# -- writing -------------------------------------------------------------------------------------


def _encode(node: Any, file: _File, out: bytearray) -> None:
    if isinstance(node, _Copied):
        out += file.view[node.el.start : node.el.end]
    elif isinstance(node, _Text):
        try:
            data = "\\".join(node.value).encode(file.codec)
        except UnicodeEncodeError:
            raise Unsupported from None
        if len(data) % 2:
            data += b"\0" if node.vr == "UI" else b" "
        out += _header(node.tag, node.vr, len(data))
        out += data
    elif isinstance(node, _Binary):
        out += _header(node.tag, node.vr, len(node.data))
        out += node.data
    elif isinstance(node, _Sequence):
        body = bytearray()
        for item in node.items:
            encoded = bytearray()
            for inner in item:
                _encode(inner, file, encoded)
            body += _ITEM_HEADER.pack(0xFFFE, 0xE000, len(encoded))
            body += encoded
        out += _header(node.tag, "SQ", len(body))
        out += body
    else:
        out += node.data


def _header(tag: int, vr: str, length: int) -> bytes:
    head = _TAG.pack(tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\0\0" + _LONG.pack(length)
    if length > 0xFFFF:
        raise Unsupported
    return head + _SHORT.pack(length)


def _meta(file: _File, final: dict[int, Any]) -> bytes:
    """The file meta as the pydicom walk writes it (writer._meta_bytes): the SOP class and the new
    instance UID, no sender, no application data."""
    values = _Values(file, final)
    sop_class = values.get("SOPClassUID", None)
    new = {
        0x00020002: sop_class if sop_class is not None else file.text(file.meta.get(0x00020002)),
        0x00020003: values.get("SOPInstanceUID", ""),
    }
    removed = {0x00020000} | {_tag_for(keyword) for keyword in rules._META_REMOVED}
    tags = (set(file.meta) - removed) | new.keys()
    if not tags <= _META.keys() or not all(tag in tags for tag in _REQUIRED_META):
        raise Unsupported  # other file meta: pydicom's writer checks and writes it
    values = {}
    for tag in tags:
        if tag in new:
            values[tag] = str(new[tag]).encode("ascii")
        elif _META[tag][0] == "OB":
            values[tag] = file.raw(file.meta[tag])
        else:
            values[tag] = file.raw(file.meta[tag]).rstrip(b"\0 ")
    return meta_group(values)


def _marks(d: Deidentifier) -> dict[int, bytes]:
    """The de-identification marks as encoded elements (the same for every file of a run)."""
    found = getattr(d, "_bytewise_marks", None)
    if found is None:
        import io

        buffer = io.BytesIO()
        d.marks_dataset().save_as(buffer, implicit_vr=False, little_endian=True)
        data = buffer.getvalue()
        elements, _ = _elements(memoryview(data), 0, len(data), 0, top=False, delimited=False)
        found = {el.tag: data[el.start : el.end] for el in elements}
        d._bytewise_marks = found
    return found
