"""Generate src/pacsflow/anonymize/profile.json from DICOM PS3.15's DocBook XML (Tables E.1-1, E.3.10-1)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from pydicom.datadict import dictionary_is_retired, keyword_for_tag

SCRIPT_NAME = "tools/make_profile.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "src" / "pacsflow" / "anonymize" / "profile.json"
# where jas88/SharpDicom keeps its copy of NEMA's part15.xml; other mirrors can pass --path
DEFAULT_PATH_IN_REPO = "data/dicom-standard/part15.xml"

DOCBOOK = "{http://docbook.org/ns/docbook}"
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"

# Our column keys, in the standard's order, each with a pattern that picks out the standard's header cell.
# Columns are found by header text rather than position, so that a column added by a later edition cannot
# shift actions into the wrong option; a header nothing here matches stops the script.
ACTION_COLUMNS: dict[str, str] = {
    "basic": r"^Basic Prof",
    "retain_safe_private": r"Safe Priv",
    "retain_uids": r"UIDs",
    "retain_device_identity": r"Dev\. ?Id",
    "retain_institution_identity": r"Inst\. ?Id",
    "retain_patient_characteristics": r"Pat\. ?Chars",
    "retain_long_full_dates": r"Full Dates",
    "retain_long_modified_dates": r"Modif\. ?Dates",
    "clean_descriptors": r"Clean Desc",
    "clean_structured_content": r"Clean Struct",
    "clean_graphics": r"Clean Graph",
}
# "In Std. Comp. IOD" is matched only to account for every header; profile.json does not carry it
OTHER_COLUMNS = {"name": r"^Attribute Name", "tag": r"^Tag$", "retired": r"^Retd", "in_iod": r"^In Std"}
# Table E.1-1a: the only action codes the standard defines; anything else means the parse went wrong.
ACTION_CODES = {"", "X", "Z", "D", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}

PLAIN_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
# repeating groups such as (50xx,xxxx) and (60xx,3000): 'x' stands for any hex digit
WILDCARD_TAG = re.compile(r"\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)")
PRIVATE_ROW = re.compile(r"\(gggg,eeee\) where gggg is odd", re.IGNORECASE)
SAFE_PRIVATE_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)", re.IGNORECASE)
EDITION = re.compile(r"PS3\.15 (\d{4}[a-z])\b")
NOT_STATED = "edition not stated by source"

# tag key -> the row's name, keyword, retired flag and one action code per column
Attributes = dict[str, dict[str, object]]


class SourceError(Exception):
    """The source does not hold the tables in the shape this script understands."""


def text_of(element: ET.Element) -> str:
    """A cell's text, whitespace collapsed: the DocBook wraps lines and puts zero-width spaces in names."""

    def walk(node: ET.Element) -> str:
        # an olink to another part has no text of its own; its target ("PS3.6") is what the reader sees
        if node.tag == DOCBOOK + "olink" and not node.text:
            own = node.get("targetptr", "")
        else:
            own = node.text or ""
        return own + "".join(walk(child) + (child.tail or "") for child in node)

    return " ".join(walk(element).replace("\u200b", "").split())


def find_table(root: ET.Element, table_id: str) -> ET.Element:
    """The <table> with this xml:id (e.g. table_E.1-1)."""
    for table in root.iter(DOCBOOK + "table"):
        if table.get(XML_ID) == table_id:
            return table
    raise SourceError(f"no table {table_id} in the source")


def table_cells(table: ET.Element) -> tuple[list[str], list[list[str]]]:
    """Header texts and the body's rows of cell texts; refuses spanned cells, which would misalign columns."""
    headers = [text_of(th) for th in table.iterfind(f"{DOCBOOK}thead/{DOCBOOK}tr/{DOCBOOK}th")]
    rows = []
    for tr in table.iterfind(f"{DOCBOOK}tbody/{DOCBOOK}tr"):
        cells = tr.findall(f"{DOCBOOK}td")
        if any(td.get("rowspan", "1") != "1" or td.get("colspan", "1") != "1" for td in cells):
            raise SourceError(f"a row with spanned cells: {[text_of(td) for td in cells]}")
        if len(cells) != len(headers):
            raise SourceError(f"a row with {len(cells)} cells for {len(headers)} headers")
        rows.append([text_of(td) for td in cells])
    return headers, rows


def column_index(headers: list[str], pattern: str) -> int:
    """The one header matching pattern."""
    found = [i for i, header in enumerate(headers) if re.search(pattern, header)]
    if len(found) != 1:
        raise SourceError(f"header pattern {pattern!r} matches {len(found)} of {headers}")
    return found[0]


def tag_key(text: str) -> str:
    """'(GGGG,EEEE)' in upper-case hex, with the standard's wildcard digits kept as 'x'; or 'private'."""
    if PRIVATE_ROW.fullmatch(text):
        return "private"
    match = WILDCARD_TAG.fullmatch(text)
    if not match:
        raise SourceError(f"unrecognised tag {text!r}")
    group, element = (part.upper().replace("X", "x") for part in match.groups())
    return f"({group},{element})"


def sort_key(key: str) -> tuple[int, int, str]:
    """Numeric order of tags, a wildcard digit counting as 0; the private-attributes row goes last."""
    if key == "private":
        return (0x10000, 0, key)
    group, element = key[1:-1].split(",")
    return (int(group.replace("x", "0"), 16), int(element.replace("x", "0"), 16), key)


def parse_attributes(root: ET.Element) -> tuple[dict[str, str], Attributes]:
    """Table E.1-1: the header text of each action column, and one entry per row keyed by tag."""
    headers, rows = table_cells(find_table(root, "table_E.1-1"))
    other = {key: column_index(headers, pattern) for key, pattern in OTHER_COLUMNS.items()}
    actions = {key: column_index(headers, pattern) for key, pattern in ACTION_COLUMNS.items()}
    if sorted(actions.values()) != list(actions.values()):
        raise SourceError(f"action columns are not in the expected order: {headers}")
    unknown = set(range(len(headers))) - set(other.values()) - set(actions.values())
    if unknown:
        raise SourceError(f"columns this script does not know: {[headers[i] for i in sorted(unknown)]}")
    attributes: Attributes = {}
    for cells in rows:
        key = tag_key(cells[other["tag"]])
        if key in attributes:
            raise SourceError(f"tag {key} is listed twice")
        retired_text = cells[other["retired"]]
        if retired_text not in ("Y", "N"):
            raise SourceError(f"{key}: retired column says {retired_text!r}")
        plain = PLAIN_TAG.fullmatch(key)
        entry: dict[str, object] = {
            "name": cells[other["name"]],
            # pydicom's keyword only for plain tags: its repeater entries are not one attribute each
            "keyword": keyword_for_tag(int(plain[1] + plain[2], 16)) if plain else "",
            "retired": retired_text == "Y",
        }
        for column, index in actions.items():
            code = re.sub(r"\s+", "", cells[index])
            if code not in ACTION_CODES:
                raise SourceError(f"{key}: unknown action {cells[index]!r} in {headers[index]!r}")
            entry[column] = code
        attributes[key] = entry
    columns = {key: headers[index] for key, index in actions.items()}
    ordered = {key: attributes[key] for key in sorted(attributes, key=sort_key)}
    return columns, ordered


def parse_safe_private(root: ET.Element) -> list[dict[str, str]]:
    """Table E.3.10-1, in the standard's order; tags are upper-cased because the standard mixes cases."""
    headers, rows = table_cells(find_table(root, "table_E.3.10-1"))
    tag = column_index(headers, r"^Data Element")
    creator = column_index(headers, r"^Private Creator")
    vr = column_index(headers, r"^VR$")
    meaning = column_index(headers, r"^Meaning")
    result = []
    for cells in rows:
        match = SAFE_PRIVATE_TAG.fullmatch(cells[tag])
        if not match:
            raise SourceError(f"unrecognised safe private tag {cells[tag]!r}")
        result.append(
            {
                "creator": cells[creator],
                "tag": f"({match[1].upper()},xx{match[2].upper()})",
                "vr": cells[vr],
                "meaning": cells[meaning],
            }
        )
    return result


def edition_of(root: ET.Element) -> str:
    """The edition the document names in its subtitle, e.g. 'DICOM PS3.15 2025e - Security and ...'."""
    for tag in ("subtitle", "title"):
        element = root.find(DOCBOOK + tag)
        if element is not None and (match := EDITION.search(text_of(element))):
            return match[1]
    return NOT_STATED


def git(git_dir: Path, *args: str) -> bytes:
    """Run git on a mirror: a bare git directory (what `fetch` gives) or a work tree."""
    where = ["--git-dir", str(git_dir)] if (git_dir / "objects").is_dir() else ["-C", str(git_dir)]
    return subprocess.run(["git", *where, *args], check=True, capture_output=True).stdout


def repo_name(git_dir: Path) -> str | None:
    """owner/name from a mirror laid out as .../owner+name/repo, as the fetch tool lays them out."""
    for part in (git_dir.name, git_dir.parent.name):
        if "+" in part:
            owner, _, name = part.partition("+")
            return f"{owner}/{name}"
    return None


def read_source(args: argparse.Namespace) -> tuple[bytes, str]:
    """The XML bytes and the provenance text recorded as "source"."""
    source: Path = args.source
    if source.is_dir():
        repo = args.repo or repo_name(source)
        if not repo:
            raise SourceError("cannot tell the repository's name from the directory: pass --repo OWNER/NAME")
        # the last commit that changed the file, so that reruns on a newer mirror record the same provenance
        # while the file is unchanged
        found = git(source, "log", "-1", "--format=%H %cI", "HEAD", "--", args.path).decode().split()
        if len(found) != 2:
            raise SourceError(f"{args.path} is in no commit of {source}")
        commit, date = found
        return git(source, "show", f"{commit}:{args.path}"), f"{repo} {commit} ({date}) {args.path}"
    data = source.read_bytes()
    label = args.label or f"local file {source.name} (sha256 {hashlib.sha256(data).hexdigest()})"
    return data, label


def report(attributes: Attributes, safe_private: list[dict[str, str]], edition: str) -> None:
    """Tell the maintainer what to look at: where pydicom's dictionary (an older edition, maybe) differs."""
    for key, entry in attributes.items():
        plain = PLAIN_TAG.fullmatch(key)
        if not (plain and entry["keyword"]):
            continue
        if dictionary_is_retired(int(plain[1] + plain[2], 16)) != entry["retired"]:
            print(f"note: {key} {entry['name']}: retired={entry['retired']}, unlike pydicom", file=sys.stderr)
    missing = [key for key, entry in attributes.items() if PLAIN_TAG.fullmatch(key) and not entry["keyword"]]
    if missing:
        print(f"note: no pydicom keyword for {', '.join(missing)}", file=sys.stderr)
    print(
        f"edition {edition}: {len(attributes)} attributes, {len(safe_private)} safe private attributes",
        file=sys.stderr,
    )


def build(xml: bytes, source_text: str) -> dict[str, object]:
    """The whole profile document."""
    root = ET.fromstring(xml)
    columns, attributes = parse_attributes(root)
    safe_private = parse_safe_private(root)
    edition = edition_of(root)
    report(attributes, safe_private, edition)
    return {
        "table": "DICOM PS3.15 Table E.1-1",
        "edition": edition,
        "source": source_text,
        "generated_by": SCRIPT_NAME,
        "columns": columns,
        "attributes": attributes,
        "safe_private": safe_private,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: make_profile.py SOURCE [-o OUTPUT]."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "source",
        type=Path,
        help="part15.xml (NEMA's DocBook of PS3.15), or a git mirror holding it (e.g. of jas88/SharpDicom)",
    )
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--path", default=DEFAULT_PATH_IN_REPO, help="the XML's path inside a git mirror")
    parser.add_argument("--repo", help="owner/name of the mirror, when its directory does not say")
    parser.add_argument("--label", help='provenance recorded as "source" when SOURCE is a plain file')
    args = parser.parse_args(argv)
    try:
        xml, source_text = read_source(args)
        profile = build(xml, source_text)
    except (SourceError, ET.ParseError, subprocess.CalledProcessError, OSError) as exc:
        detail = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        print(f"make_profile: {detail}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
