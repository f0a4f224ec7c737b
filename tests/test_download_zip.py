"""download: the folder layout, one ZIP, one ZIP per patient (rebuilt when a patient gains series), each
series' count checked, and what bad input, a full disk and Ctrl-C leave behind."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import Dataset

from pacsflow.config import Settings
from pacsflow.engine import EXIT_OK, Engine
from pacsflow.errors import BadInput
from pacsflow.inventory import series_rows_from_run
from pacsflow.ledger import FAILED, Ledger
from pacsflow.ops.download import Download
from pacsflow.orthanc import Orthanc
from pacsflow.synthetic import Shape, encode, make_instance
from pacsflow.zipappend import scan
from tests.conftest import PACSFLOW, cli, run_cli

SHAPE = Shape(patients=2, series=2, instances=3, pixels=16, seed=57)


def upload(client: Orthanc, shape: Shape = SHAPE, patient_id: str | None = None, **tags: object) -> list[str]:
    """Every instance of SHAPE on the server (PatientID and other tags replaced where given)."""
    ids = []
    for p in range(shape.patients):
        for se in range(shape.series):
            for i in range(shape.instances):
                ids.append(
                    client.upload(encode(changed(make_instance(shape, p, 0, se, i), patient_id, **tags)))[
                        "ID"
                    ]
                )
    return ids


def changed(ds: Dataset, patient_id: str | None = None, **tags: object) -> Dataset:
    if patient_id is not None:
        ds.PatientID = patient_id
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert {info.compress_type for info in archive.infolist()} <= {zipfile.ZIP_STORED}
        return {name: archive.read(name) for name in archive.namelist()}


def server_files(client: Orthanc) -> dict[str, bytes]:
    """Every file on the server by its SOPInstanceUID."""
    files = {}
    for instance in client.ids("instances"):
        uid = client.resource("instances", instance)["MainDicomTags"]["SOPInstanceUID"]
        files[uid] = client.instance_file(instance)
    return files


def fetched_in_last_run(workdir: Path) -> int:
    """How many instances the last run fetched from the server (the others it found already there)."""
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    run_id = ledger.runs()[0].id
    return sum(1 for item in ledger.items(run_id, kind="instance") if item.status == "done")


def by_sop(entries: dict[str, bytes]) -> dict[str, bytes]:
    return {
        name.rsplit("/", 1)[1].split("_", 1)[1].removesuffix(".dcm"): data for name, data in entries.items()
    }


def test_the_folder_layout_names_patient_study_series_and_instance(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=2, pixels=16, seed=58)
    upload(client_a, shape)
    ds = make_instance(shape, 0, 0, 0, 0)
    result = run_cli("download", "--from", "a", "--out", "dl", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    description = str(ds.StudyDescription).replace(" ", "_")
    study = f"{ds.StudyDate}_{description}_"
    files = sorted(path.relative_to(workdir / "dl").as_posix() for path in (workdir / "dl").rglob("*.dcm"))
    assert len(files) == 2
    patient, study_folder, series_folder, name = files[0].split("/")
    assert patient == ds.PatientID
    assert study_folder.startswith(study) and study_folder.endswith(f"_{ds.StudyInstanceUID}")
    assert series_folder == "1_series_1"
    assert name == f"00001_{ds.SOPInstanceUID}.dcm"
    assert files[1].endswith(f"/00002_{make_instance(shape, 0, 0, 0, 1).SOPInstanceUID}.dcm")


def test_one_zip_holds_every_instance_and_a_rerun_fetches_only_what_is_new(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a)
    result = run_cli("download", "--from", "a", "--zip", "all.zip", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    entries = zip_entries(workdir / "all.zip")
    assert by_sop(entries) == server_files(client_a)  # 12 instances, byte for byte
    assert all(name.count("/") == 3 for name in entries)  # the folder layout inside
    assert sorted(path.name for path in workdir.iterdir() if "zip" in path.name) == ["all.zip"]  # no .part
    unchanged = (workdir / "all.zip").stat().st_mtime_ns

    again = run_cli("download", "--from", "a", "--zip", "all.zip", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert fetched_in_last_run(workdir) == 0
    assert (workdir / "all.zip").stat().st_mtime_ns == unchanged  # nothing to add: not written again

    newer = Shape(patients=1, series=1, instances=1, pixels=16, seed=59)
    new_file = encode(make_instance(newer, 0, 0, 0, 0))
    client_a.upload(new_file)
    third = run_cli("download", "--from", "a", "--zip", "all.zip", cwd=workdir)
    assert third.returncode == 0, third.stdout + third.stderr
    assert fetched_in_last_run(workdir) == 1  # only the new instance
    assert by_sop(zip_entries(workdir / "all.zip")) == server_files(client_a)


def test_one_zip_per_patient_is_rebuilt_when_the_patient_gains_a_series(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a)
    first = [make_instance(SHAPE, p, 0, 0, 0).PatientID for p in range(2)]
    result = run_cli("download", "--from", "a", "--per-patient-zip", "zips", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    zips = workdir / "zips"
    assert sorted(path.name for path in zips.iterdir()) == sorted(f"{pid}__seriesCount2.zip" for pid in first)
    untouched = zips / f"{first[1]}__seriesCount2.zip"
    mtime = untouched.stat().st_mtime_ns
    assert len(zip_entries(untouched)) == 6

    # the first patient gets a third series
    extra = make_instance(Shape(patients=1, series=1, instances=1, pixels=16, seed=60), 0, 0, 0, 0)
    base = make_instance(SHAPE, 0, 0, 0, 0)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyDescription"):
        setattr(extra, keyword, getattr(base, keyword))
    client_a.upload(encode(extra))
    again = run_cli("download", "--from", "a", "--per-patient-zip", "zips", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(path.name for path in zips.iterdir()) == sorted(
        [f"{first[0]}__seriesCount3.zip", f"{first[1]}__seriesCount2.zip"]
    )  # the new ZIP written, then the old one removed
    assert len(zip_entries(zips / f"{first[0]}__seriesCount3.zip")) == 7
    assert untouched.stat().st_mtime_ns == mtime  # the other patient's ZIP is left as it was

    custom = run_cli("download", "--from", "a", "--per-patient-zip", "z2", "--delimiter", "_n", cwd=workdir)
    assert custom.returncode == 0, custom.stdout + custom.stderr
    # the run's inventory: every series, all of it present
    listed = run_cli("inventory", "--from", "last", "--out", "inv.csv", cwd=workdir)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    with open(workdir / "inv.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and {row["status"] for row in rows} == {"complete"}
    assert sorted(int(row["present_instances"]) for row in rows) == [1, 3, 3, 3, 3]
    assert (workdir / "inv.csv").stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in (workdir / "z2").iterdir()) == sorted(
        [f"{first[0]}_n3.zip", f"{first[1]}_n2.zip"]
    )


def test_awkward_patient_ids_give_safe_distinct_zip_names(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    awkward = ["../up", "a/b", "a_b", "two words", "Zoë-Ø", ".."]
    for n, patient_id in enumerate(awkward):
        shape = Shape(patients=1, series=1, instances=1, pixels=16, seed=62 + n)
        client_a.upload(encode(changed(make_instance(shape, 0, 0, 0, 0), patient_id)))
    result = run_cli("download", "--from", "a", "--per-patient-zip", "zips", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    names = sorted(path.name for path in (workdir / "zips").iterdir())
    assert len(names) == len(awkward)  # six patients, six ZIPs: none written over another
    assert "a_b__seriesCount1.zip" in names and "Zoë-Ø__seriesCount1.zip" in names  # kept as they are
    assert all("/" not in name and not name.startswith(".") and " " not in name for name in names)
    assert [path for path in workdir.iterdir() if path.name.startswith("up")] == []  # nothing escaped
    for path in (workdir / "zips").iterdir():
        (entry,) = zip_entries(path)
        assert not entry.startswith(("/", "..")) and "/../" not in entry


def test_a_series_short_of_its_expected_count_fails_the_check(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=3, pixels=16, seed=70)
    for i in range(2):  # 3 images x 1 temporal position: Orthanc expects 3; the server holds 2
        tags = {"ImagesInAcquisition": 3, "NumberOfTemporalPositions": 1}
        client_a.upload(encode(changed(make_instance(shape, 0, 0, 0, i), **tags)))
    result = run_cli("download", "--from", "a", "--out", "dl", cwd=workdir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "with series whose instance count is not the expected one" in result.stdout
    assert len(list((workdir / "dl").rglob("*.dcm"))) == 2  # what there is, is downloaded
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    (failed,) = ledger.items(ledger.runs()[0].id, status=FAILED)
    ds = make_instance(shape, 0, 0, 0, 0)
    assert failed.kind == "check"
    assert failed.last_error.endswith(f"counts differ: series 1 {ds.Modality} series 1: 2 of 3 instances")
    shown = run_cli("run", "show", ledger.runs()[0].id, "--failed", cwd=workdir)
    assert "2 of 3 instances" in shown.stdout and ds.PatientID not in shown.stdout


def test_unknown_study_and_empty_query_say_so_and_write_nothing(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=1, series=1, instances=1, pixels=16, seed=71))
    unknown = cli(
        "download", "--from", "a", "--zip", "x.zip", "--study", "0" * 8 + "-00000000" * 4, cwd=workdir
    )
    assert unknown.returncode == 2 and "--study matches no study on a" in unknown.stderr
    empty = run_cli("download", "--from", "a", "--zip", "y.zip", "--query", "PatientID=NOBODY", cwd=workdir)
    assert empty.returncode == 0, empty.stdout + empty.stderr
    assert "the selection matches no study" in empty.stderr
    assert not (workdir / "x.zip").exists()
    assert (
        zip_entries(workdir / "y.zip") == {}
    )  # an empty selection gives an empty archive, not a missing one


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """FOLDER where no one may create a file: immutable for root (who ignores modes), mode 0500 else."""
    folder.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
    try:
        yield
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o700)


def test_a_read_only_folder_is_refused_before_anything_starts(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=1, series=1, instances=1, pixels=16, seed=72))
    locked = workdir / "locked"
    with read_only(locked):
        for output in (
            ["--out", str(locked)],
            ["--zip", str(locked / "a.zip")],
            ["--per-patient-zip", str(locked)],
        ):
            result = cli("download", "--from", "a", *output, cwd=workdir)
            assert result.returncode == 2, result.stdout + result.stderr
            assert f"cannot write into {locked}" in result.stderr
        assert list(locked.iterdir()) == []


def test_a_full_disk_stops_the_run_leaves_no_partial_file_and_resumes(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=1, series=1, instances=4, pixels=16, seed=73))
    out = workdir / "dl"
    op = Download(settings, {"from": "a", "out": str(out)})
    real = op.source.stream_instance_file
    calls = []

    def full(instance: str, fh: object, chunk_size: int = 1 << 20) -> int:
        calls.append(instance)
        if len(calls) >= 2:  # a real full disk cannot be made here: the write fails as it would
            fh.write(b"DICM")  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(instance, fh, chunk_size)

    op.source.stream_instance_file = full  # type: ignore[method-assign]
    ledger = Ledger(settings.ledger)
    result = Engine(ledger, settings, workers=1).start(op)
    assert result.exit_code != EXIT_OK and result.status == "stopped"
    assert "no space left" in str(result.error)
    assert [p.name for p in out.rglob("*") if p.is_file() and p.suffix != ".dcm"] == []  # no .part left
    assert ledger.run(result.run_id).counts.get(FAILED, 0) == 0  # nothing failed for good: it waits
    resumed = Engine(ledger, settings).resume(result.run_id)
    assert resumed.exit_code == EXIT_OK
    assert len(list(out.rglob("*.dcm"))) == 4


def test_ctrl_c_mid_zip_leaves_no_zip_under_its_name_and_a_resume_finishes_it(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=2, series=2, instances=25, pixels=128, seed=74)
    upload(client_a, shape)
    process = subprocess.Popen(
        [*PACSFLOW, "download", "--from", "a", "--zip", "big.zip", "--workers", "1"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    part = workdir / "big.zip.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 200_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0, err
    assert not (workdir / "big.zip").exists()  # never a half archive under the final name
    run_id = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}").runs()[0].id
    resumed = run_cli("resume", run_id, cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert by_sop(zip_entries(workdir / "big.zip")) == server_files(client_a)
    assert not part.exists()


def test_a_study_deleted_while_downloading_fails_its_items_and_no_zip_is_written(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=2, series=1, instances=2, pixels=16, seed=75))
    doomed = client_a.ids("studies")[0]
    op = Download(settings, {"from": "a", "zip": str(workdir / "all.zip")})
    real = op._listing

    def listed_then_deleted(study: str):  # the study goes from the server once its instances are planned
        listing = real(study)
        if study == doomed:
            client_a.delete_resource("studies", study)
        return listing

    op._listing = listed_then_deleted  # type: ignore[method-assign]
    ledger = Ledger(settings.ledger)
    result = Engine(ledger, settings).start(op)
    assert result.exit_code == 1
    failed = ledger.items(result.run_id, status=FAILED)
    assert sorted(item.kind for item in failed) == ["archive", "check", "instance", "instance"]
    assert {item.last_error.split(": ", 1)[1] for item in failed if item.kind == "instance"} == {
        f"instance is no longer on a ({client_a.display.split('(')[1]}"
    }
    (archive,) = [item for item in failed if item.kind == "archive"]
    assert "ZIP not written: 2 of 4 instances are missing" in archive.last_error
    assert not (workdir / "all.zip").exists()  # never a ZIP that lacks what it should hold
    assert len(zip_entries_of_part(workdir / "all.zip.part")) == 2  # the other study's, kept for a retry
    # the run's inventory: nothing is present while its ZIP is not written
    rows = series_rows_from_run(ledger, result.run_id)
    assert [(row.present_instances, row.status) for row in rows] == [(0, "incomplete"), (0, "incomplete")]


def zip_entries_of_part(part: Path) -> list[str]:
    return [entry.name for entry in scan(part)[0]]


def test_de_identified_per_patient_zips_are_named_by_pseudonym(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=2, series=2, instances=1, pixels=16, seed=76))
    secret = {"PACSFLOW_ANONYMIZE__SECRET": "download-test-secret-0123456789ab"}
    result = run_cli(
        "download", "--from", "a", "--per-patient-zip", "zips", "--anonymize", cwd=workdir, env=secret
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = sorted(path.name for path in (workdir / "zips").iterdir())
    assert len(names) == 2 and all(
        name.startswith("ANON-") and name.endswith("__seriesCount2.zip") for name in names
    )
    originals = [
        make_instance(Shape(patients=2, series=2, instances=1, pixels=16, seed=76), p, 0, 0, 0)
        for p in (0, 1)
    ]
    for path in (workdir / "zips").iterdir():
        entries = zip_entries(path)
        assert len(entries) == 2
        for name, data in entries.items():
            assert name.split("/", 1)[0] == path.name.split("__", 1)[0]  # the pseudonym's folder inside
            for ds in originals:  # no original identifier in a name or in the bytes
                for value in (str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)):
                    assert value not in name and value.encode() not in data


def test_a_rerun_keeps_what_the_server_no_longer_has(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a)
    zipped = run_cli("download", "--from", "a", "--per-patient-zip", "zips", "--zip", "x", cwd=workdir)
    assert zipped.returncode == 2  # one output at a time
    assert run_cli("download", "--from", "a", "--per-patient-zip", "zips", cwd=workdir).returncode == 0
    assert run_cli("download", "--from", "a", "--zip", "all.zip", cwd=workdir).returncode == 0
    before = {path.name: zip_entries(path) for path in (workdir / "zips").iterdir()}
    whole = zip_entries(workdir / "all.zip")
    # the seed's routine: archive, then prune the server; a series and then a study go
    first_patient = client_a.ids("patients")[0]
    client_a.delete_resource("series", client_a.children("patients", first_patient, "series")[0]["ID"])
    again = run_cli("download", "--from", "a", "--per-patient-zip", "zips", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {path.name: zip_entries(path) for path in (workdir / "zips").iterdir()} == before  # nothing lost
    one_study = client_a.ids("studies")[0]
    narrower = run_cli("download", "--from", "a", "--zip", "all.zip", "--study", one_study, cwd=workdir)
    assert narrower.returncode == 0, narrower.stdout + narrower.stderr
    assert zip_entries(workdir / "all.zip") == whole


def test_damaged_zip_bytes_are_fetched_again_and_never_kept(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=1, series=1, instances=3, pixels=16, seed=77))
    assert run_cli("download", "--from", "a", "--zip", "all.zip", cwd=workdir).returncode == 0
    damage(workdir / "all.zip")  # bit rot in a finished ZIP
    again = run_cli("download", "--from", "a", "--zip", "all.zip", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert by_sop(zip_entries(workdir / "all.zip")) == server_files(client_a)
    assert fetched_in_last_run(workdir) == 1

    # a part file left by a killed run, damaged since: its bad entry is cut off and fetched again
    builder_part = workdir / "new.zip.part"
    (workdir / "all.zip").rename(builder_part)  # its entries at the front, then a central directory
    damage(builder_part)
    fresh = run_cli("download", "--from", "a", "--zip", "new.zip", cwd=workdir)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert by_sop(zip_entries(workdir / "new.zip")) == server_files(client_a)


def damage(path: Path) -> None:
    """Zero 64 bytes inside the second entry's data."""
    (_, second, *_), _ = scan(path)
    data = bytearray(path.read_bytes())
    at = second.offset + 30 + len(second.name.encode()) + 100
    data[at : at + 64] = bytes(64)
    path.write_bytes(bytes(data))


def test_an_old_patient_zip_left_beside_the_new_one_is_removed(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=1, series=2, instances=1, pixels=16, seed=78))
    assert run_cli("download", "--from", "a", "--per-patient-zip", "zips", cwd=workdir).returncode == 0
    (new,) = (workdir / "zips").iterdir()
    stale = new.with_name(new.name.replace("__seriesCount2", "__seriesCount1"))
    stale.write_bytes(new.read_bytes())  # a run killed between writing the new ZIP and removing the old
    again = run_cli("download", "--from", "a", "--per-patient-zip", "zips", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [path.name for path in (workdir / "zips").iterdir()] == [new.name]


def test_a_study_not_listed_keeps_the_zip_unwritten_until_a_retry(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=2, series=1, instances=1, pixels=16, seed=79))
    op = Download(settings, {"from": "a", "zip": str(workdir / "all.zip")})
    real, broken = op._listing, client_a.ids("studies")[0]

    def failing_once(study: str):
        if study == broken:
            raise BadInput("listing refused")
        return real(study)

    op._listing = failing_once  # type: ignore[method-assign]
    ledger = Ledger(settings.ledger)
    result = Engine(ledger, settings).start(op)
    assert result.exit_code == 1 and not (workdir / "all.zip").exists()
    (archive,) = [item for item in ledger.items(result.run_id, status=FAILED) if item.kind == "archive"]
    assert "1 study could not be listed" in archive.last_error
    assert ledger.retry_failed(result.run_id) == 2
    assert Engine(ledger, settings).resume(result.run_id).exit_code == EXIT_OK
    assert by_sop(zip_entries(workdir / "all.zip")) == server_files(client_a)


def test_a_series_with_more_instances_than_announced_is_reported(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    shape = Shape(patients=1, series=1, instances=4, pixels=16, seed=80)
    for i in range(4):  # a cine series whose tags announce 2 images
        client_a.upload(encode(changed(make_instance(shape, 0, 0, 0, i), CardiacNumberOfImages=2)))
    result = run_cli("download", "--from", "a", "--out", "dl", cwd=workdir)
    assert result.returncode == 1
    assert len(list((workdir / "dl").rglob("*.dcm"))) == 4
    ledger = Ledger(f"sqlite:///{workdir / '.pacsflow' / 'ledger.db'}")
    (failed,) = ledger.items(ledger.runs()[0].id, status=FAILED)
    assert failed.last_error.endswith("4 instances, 2 expected")


def test_temporary_files_of_a_killed_run_are_removed(
    workdir: Path, config_file: Path, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=1, series=1, instances=2, pixels=16, seed=81))
    assert run_cli("download", "--from", "a", "--out", "dl", cwd=workdir).returncode == 0
    one = next((workdir / "dl").rglob("*.dcm"))
    stale = one.with_name(f"{one.name}.0123456789ab.part")
    stale.write_bytes(b"DICM")  # what a kill -9 mid-file leaves
    assert run_cli("download", "--from", "a", "--out", "dl", cwd=workdir).returncode == 0
    assert not stale.exists()


def test_a_patients_zip_is_closed_as_soon_as_its_files_are_in(
    workdir: Path, settings: Settings, client_a: Orthanc
) -> None:
    upload(client_a, Shape(patients=2, series=1, instances=6, pixels=16, seed=82))
    op = Download(settings, {"from": "a", "per_patient_zip": str(workdir / "zips")})
    events: list[tuple[str, str]] = []
    fetch, close = op._into_archive, op.archives.close

    def fetching(instance: str, name: str, final: Path, patient: str | None):  # type: ignore[no-untyped-def]
        events.append(("fetch", str(patient)))
        return fetch(instance, name, final, patient)

    def closing(final: Path, names, patient=None):  # type: ignore[no-untyped-def]
        events.append(("close", str(patient)))
        return close(final, names, patient)

    op._into_archive = fetching  # type: ignore[method-assign]
    op.archives.close = closing  # type: ignore[method-assign]
    result = Engine(Ledger(settings.ledger), settings, workers=1).start(op)
    assert result.exit_code == EXIT_OK
    first_close = events.index(next(event for event in events if event[0] == "close"))
    closed, other = events[first_close][1], {patient for _, patient in events} - {events[first_close][1]}
    (other,) = other
    # an assembly line: the first patient's ZIP is written while the other's files are still coming
    assert ("fetch", other) in events[first_close + 1 :]
    assert all(event != ("fetch", closed) for event in events[first_close + 1 :])
    assert len(list((workdir / "zips").iterdir())) == 2
