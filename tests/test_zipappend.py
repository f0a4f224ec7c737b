"""Archives built entry by entry: read back by zipfile and `unzip -t`, a torn last entry cut off, a name
written once, ZIP64 end records when the entries pass 65,535; and the layout's safe names."""

from __future__ import annotations

import os
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from pacsflow.layout import patient_zip_name, patient_zip_pattern, safe_part
from pacsflow.zipappend import ZipBuilder, local_header, part_of, scan


def entries_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def test_threads_append_and_the_closed_archive_reads_back(tmp_path: Path) -> None:
    final = tmp_path / "a.zip"
    builder = ZipBuilder(final)
    data = {f"Zoë/{n:03d}/f{n}.dcm": os.urandom(500 + n) for n in range(40)}
    threads = [threading.Thread(target=builder.append, args=item) for item in data.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builder.append("Zoë/001/f1.dcm", b"other") is False  # a retried item adds nothing
    assert not final.exists()  # only the part file until it is closed
    builder.close(sorted(data))
    assert entries_of(final) == data
    assert not part_of(final).exists()
    tested = subprocess.run(["unzip", "-tq", str(final)], capture_output=True, text=True)  # make system
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_torn_last_entry_is_cut_off_and_appending_goes_on(tmp_path: Path) -> None:
    final = tmp_path / "a.zip"
    first = ZipBuilder(final)
    first.append("one", b"1" * 1000)
    first.append("two", b"2" * 1000)
    whole = part_of(final).stat().st_size
    with open(part_of(final), "r+b") as fh:  # a process killed while writing its third entry
        fh.seek(whole)
        fh.write(local_header("three", 5000, 0, 0, 0) + b"3" * 100)
    assert [entry.name for entry in scan(part_of(final))[0]] == ["one", "two"]
    later = ZipBuilder(final)  # the next run
    assert later.names() == {"one", "two"}
    later.append("three", b"3")  # written where the torn entry began
    entries, end = scan(part_of(final), verify=True)
    assert [entry.name for entry in entries] == ["one", "two", "three"] and entries[2].offset == whole
    assert end == part_of(final).stat().st_size
    later.close(["one", "two", "three"])
    assert entries_of(final) == {"one": b"1" * 1000, "two": b"2" * 1000, "three": b"3"}


def test_closing_with_a_name_never_appended_fails_and_keeps_the_part(tmp_path: Path) -> None:
    builder = ZipBuilder(tmp_path / "a.zip")
    builder.append("one", b"1")
    with pytest.raises(KeyError):
        builder.close(["one", "missing"])
    assert part_of(tmp_path / "a.zip").exists() and not (tmp_path / "a.zip").exists()


def test_more_than_65535_entries_get_zip64_end_records(tmp_path: Path) -> None:
    final = tmp_path / "many.zip"
    builder = ZipBuilder(final)
    names = [f"{n}" for n in range(65_600)]
    for name in names:
        builder.append(name, b"")
    builder.close(names)
    with zipfile.ZipFile(final) as archive:
        assert len(archive.infolist()) == 65_600
    assert b"PK\x06\x06" in final.read_bytes()[-200:]  # the ZIP64 end of central directory record


def test_safe_parts_keep_plain_ids_and_keep_different_ids_apart() -> None:
    assert safe_part("AA-BB-CC", "x") == "AA-BB-CC"
    assert safe_part("Zoë", "x") == "Zoë"
    assert safe_part("", "unknown") == "unknown"
    awkward = ["a/b", "a_b", "a b", "..", ".", "../x", "a\\b", "a\x00b", "x" * 100]
    names = [safe_part(value, "x") for value in awkward]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 64
    assert names[1] == "a_b"  # unchanged, while a/b became a_b~<hash>
    assert names[0].startswith("a_b~")


def test_a_patients_zip_names_never_match_another_patients() -> None:
    pattern = patient_zip_pattern("A", "__seriesCount")
    assert pattern.fullmatch(patient_zip_name("A", "__seriesCount", 7))
    assert not pattern.fullmatch(patient_zip_name("A__seriesCount1", "__seriesCount", 2))
    assert not pattern.fullmatch(patient_zip_name("AB", "__seriesCount", 2))


def test_two_processes_appending_to_one_archive_see_each_others_entries(tmp_path: Path) -> None:
    final = tmp_path / "a.zip"
    first, second = ZipBuilder(final), ZipBuilder(final)  # as two processes of one run hold them
    first.append("one", b"1")
    second.append("two", b"2")
    assert first.append("two", b"2") is False  # already there, appended by the other
    first.close(["one", "two"])
    assert entries_of(final) == {"one": b"1", "two": b"2"}
