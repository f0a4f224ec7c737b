"""transfer between real Orthancs: REST copy of what is missing, Orthanc peers, queries, verification."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow.orthanc import Orthanc
from pacsflow.sandbox import LocalOrthanc
from tests.conftest import PACSFLOW, PASSWORD, USER, cli, run_cli, start_cli, wait_for
from tests.test_identity import TcpProxy, assert_refused, name_a_again, spellings_of_a


@pytest.fixture(scope="module")
def peer_source(
    tmp_path_factory: pytest.TempPathFactory, _orthanc_a: LocalOrthanc, _orthanc_b: LocalOrthanc
) -> Iterator[LocalOrthanc]:
    """An Orthanc that knows A (with its password) and B as OrthancPeers."""
    peers = {
        "to-a": {"Url": _orthanc_a.url + "/", "Username": USER, "Password": PASSWORD},
        "to-b": [_orthanc_b.url + "/"],
    }
    modalities = {"node-b": [_orthanc_b.aet, "127.0.0.1", _orthanc_b.dicom_port]}
    server = LocalOrthanc(
        "P", tmp_path_factory.mktemp("orthanc-p"), aet="ORTHANCP", peers=peers, modalities=modalities
    ).start()
    yield server
    server.kill()


@pytest.fixture
def source(peer_source: LocalOrthanc) -> Iterator[Orthanc]:
    with Orthanc(peer_source.server_config()) as client:
        for patient in client.ids("patients"):
            client.delete_resource("patients", patient)
        yield client


def test_via_peer_the_source_sends_and_each_study_is_verified(
    workdir: Path, peer_source: LocalOrthanc, source: Orthanc, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    cli(
        "populate",
        "--to",
        peer_source.url,
        "--patients",
        "2",
        "--series",
        "2",
        "--instances",
        "3",
        cwd=workdir,
    )
    result = run_cli(
        "transfer",
        "--from",
        peer_source.url,
        "--to",
        orthanc_a.url_with_credentials,
        "--via",
        "peer",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified 2, failed 0; instances copied 12" in result.stdout
    assert sorted(client_a.ids("instances")) == sorted(source.ids("instances"))
    again = run_cli(
        "transfer",
        "--from",
        peer_source.url,
        "--to",
        orthanc_a.url_with_credentials,
        "--via",
        "peer",
        cwd=workdir,
    )
    assert "instances copied 0" in again.stdout and "2 studies were complete already" in again.stdout


def test_via_peer_needs_the_destination_among_the_source_peers(
    workdir: Path, config_file: Path, orthanc_b: LocalOrthanc
) -> None:
    result = run_cli("transfer", "--from", "b", "--to", "a", "--via", "peer", cwd=workdir)
    assert result.returncode == 2
    assert "has no Orthanc peer with URL" in result.stderr and "(its peers: none)" in result.stderr


def test_query_chooses_the_studies(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "3", "--instances", "2", "--seed", "4", cwd=workdir)
    result = run_cli("transfer", "--from", "a", "--to", "b", "--query", "PatientID=PF004-00001", cwd=workdir)
    assert result.returncode == 0, result.stderr
    patients = [
        client_b.resource("patients", p)["MainDicomTags"]["PatientID"] for p in client_b.ids("patients")
    ]
    assert patients == ["PF004-00001"]
    bad = run_cli("transfer", "--from", "a", "--to", "b", "--query", "PatientID", cwd=workdir)
    assert bad.returncode == 2 and "write TAG=VALUE" in bad.stderr


def test_destination_missing_an_instance_after_copy_fails_verification(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "1", "--instances", "3", cwd=workdir)
    planned = run_cli("transfer", "--from", "a", "--to", "b", "--plan-only", cwd=workdir)
    assert planned.returncode == 0
    first = run_cli("transfer", "--from", "a", "--to", "b", cwd=workdir)
    assert first.returncode == 0
    # someone deletes an instance on B: a new transfer copies exactly that one back and verifies
    client_b.delete_resource("instances", client_b.ids("instances")[0])
    again = run_cli("transfer", "--from", "a", "--to", "b", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert "instances copied 1" in again.stdout and "verified 1" in again.stdout
    assert sorted(client_b.ids("instances")) == sorted(client_a.ids("instances"))


def test_via_dicom_the_source_c_stores_and_c_find_verifies(
    workdir: Path, peer_source: LocalOrthanc, source: Orthanc, orthanc_b: LocalOrthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", peer_source.url, "--patients", "2", "--instances", "3", cwd=workdir)
    client_b.upload(source.instance_file(source.ids("instances")[0]))  # one is there already
    node = f"{orthanc_b.aet}@127.0.0.1:{orthanc_b.dicom_port}"
    result = run_cli("transfer", "--from", peer_source.url, "--to", node, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified 2, failed 0; instances copied 5" in result.stdout
    assert sorted(client_b.ids("instances")) == sorted(source.ids("instances"))
    again = run_cli("transfer", "--from", peer_source.url, "--to", node, cwd=workdir)
    assert "instances copied 0" in again.stdout and "2 studies were complete already" in again.stdout


def test_via_dicom_needs_a_known_and_reachable_node(
    workdir: Path, peer_source: LocalOrthanc, orthanc_a: LocalOrthanc
) -> None:
    node = f"{orthanc_a.aet}@127.0.0.1:{orthanc_a.dicom_port}"  # not among the source's modalities
    unknown = run_cli("transfer", "--from", peer_source.url, "--to", node, cwd=workdir)
    assert unknown.returncode == 2 and f"has no DICOM modality {node}" in unknown.stderr
    dead = run_cli("transfer", "--from", peer_source.url, "--to", "NOBODY@127.0.0.1:1", cwd=workdir)
    assert dead.returncode == 2 and "cannot reach" in dead.stderr


def test_compare_with_a_dicom_node_and_transfer_missing_to_it(
    workdir: Path, peer_source: LocalOrthanc, source: Orthanc, orthanc_b: LocalOrthanc, client_b: Orthanc
) -> None:
    cli(
        "populate",
        "--to",
        peer_source.url,
        "--patients",
        "2",
        "--series",
        "2",
        "--instances",
        "2",
        cwd=workdir,
    )
    # one whole study and one instance of the other (not the first five listed: their order follows
    # the order the parallel populate stored them in)
    first, second = sorted(source.ids("studies"))
    chosen = source.instance_ids_of("studies", first) + source.instance_ids_of("studies", second)[:1]
    for instance in chosen:
        client_b.upload(source.instance_file(instance))
    node = f"{orthanc_b.aet}@127.0.0.1:{orthanc_b.dicom_port}"
    for level, expected in (
        ("study", "studies: A has 2, B has 2; only in A 0, only in B 0, instance counts differ 1"),
        ("series", "series: A has 4, B has 3; only in A 1, only in B 0, instance counts differ 1"),
        ("instance", "instances: A has 8, B has 5; only in A 3, only in B 0, instance counts differ 0"),
    ):
        result = run_cli("compare", peer_source.url, node, "--level", level, cwd=workdir)
        assert result.returncode == 1, result.stderr
        assert expected in result.stdout
    fixed = run_cli("compare", peer_source.url, node, "--transfer-missing", cwd=workdir)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert sorted(client_b.ids("instances")) == sorted(source.ids("instances"))
    same = run_cli("compare", peer_source.url, node, "--level", "instance", cwd=workdir)
    assert same.returncode == 0


def test_forward_each_new_instance_to_a_dicom_node(
    workdir: Path, peer_source: LocalOrthanc, source: Orthanc, orthanc_b: LocalOrthanc, client_b: Orthanc
) -> None:
    node = f"{orthanc_b.aet}@127.0.0.1:{orthanc_b.dicom_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFLOW_")}
    log = (workdir / "forward.log").open("a")
    forwarder = subprocess.Popen(
        [
            *PACSFLOW,
            "forward",
            "--from",
            peer_source.url,
            "--to",
            node,
            "--trigger",
            "new-instance",
            "--poll",
            "0.3",
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        cli(
            "populate",
            "--to",
            peer_source.url,
            "--patients",
            "1",
            "--instances",
            "4",
            "--seed",
            "8",
            cwd=workdir,
        )
        wait_for(
            lambda: len(client_b.ids("instances")) == 4 and not source.ids("instances"),
            "every instance on the node and gone from the source",
            forwarder,
        )
    finally:
        forwarder.send_signal(signal.SIGTERM)
        code = forwarder.wait(timeout=30)
    assert code == 130, (workdir / "forward.log").read_text()


def test_transfer_and_clone_refuse_the_source_under_another_spelling(
    workdir: Path, config_file: Path, orthanc_a: LocalOrthanc, client_a: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "1", "--instances", "2", cwd=workdir)
    name_a_again(config_file, orthanc_a)
    proxy = TcpProxy(orthanc_a.http_port)
    try:
        for spelling, why in spellings_of_a(orthanc_a, proxy):
            for command in ("transfer", "clone"):
                assert_refused(run_cli(command, "--from", "a", "--to", spelling, cwd=workdir), why)
    finally:
        proxy.close()
    assert len(client_a.ids("instances")) == 2
    runs = run_cli("runs", cwd=workdir).stdout
    assert "transfer" not in runs and "clone" not in runs  # refused before any run started


@pytest.mark.parametrize("via", ["dicom", "peer"])
def test_a_destination_down_behind_the_source_s_store_job_pauses_the_run(
    workdir: Path, peer_source: LocalOrthanc, source: Orthanc, orthanc_b: LocalOrthanc, via: str
) -> None:
    """The source Orthanc answers for its failed C-STORE or peer store: the destination itself being
    down is still an outage, waited out on the default settings, never a failed study."""
    cli("populate", "--to", peer_source.url, "--patients", "5", "--instances", "30", cwd=workdir)
    target = f"{orthanc_b.aet}@127.0.0.1:{orthanc_b.dicom_port}" if via == "dicom" else orthanc_b.url
    process = start_cli(
        "transfer",
        "--from",
        peer_source.url,
        "--to",
        target,
        "--via",
        via,
        "--workers",
        "1",
        cwd=workdir,
        log="transfer.log",
    )
    with Orthanc(orthanc_b.server_config()) as destination:
        wait_for(lambda: len(destination.ids("instances")) >= 30, "a first study stored", process)
    orthanc_b.kill()
    time.sleep(5)
    orthanc_b.start()
    code = process.wait(timeout=180)
    output = (workdir / "transfer.log").read_text()
    assert code == 0, output[-3000:]
    assert "waiting for" in output and "answers again after" in output
    with Orthanc(orthanc_b.server_config()) as destination:
        assert sorted(destination.ids("instances")) == sorted(source.ids("instances"))


def study_tags(client: Orthanc) -> dict[str, dict[str, str]]:
    """Orthanc study ID -> PatientID, StudyInstanceUID, AccessionNumber and StudyDate of each study."""
    wanted = ("PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate")
    found = {}
    for info in client.find("Study", {}, expand=True):
        tags = {**info["MainDicomTags"], **info["PatientMainDicomTags"]}
        found[info["ID"]] = {key: tags[key] for key in wanted}
    return found


def test_studies_chosen_by_uid_accession_and_patient(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    shape = ["--patients", "3", "--studies", "2", "--instances", "1", "--seed", "6"]
    cli("populate", "--to", "a", *shape, cwd=workdir)
    studies = study_tags(client_a)
    first, second, third = sorted(studies)[:3]
    patient = studies[third]["PatientID"]
    of_patient = {study for study, tags in studies.items() if tags["PatientID"] == patient}
    uid, accession = studies[first]["StudyInstanceUID"], studies[second]["AccessionNumber"]
    chosen = ["--study", uid, "--accession", accession, "--patient", patient]
    planned = run_cli("transfer", "--from", "a", "--to", "b", *chosen, "--plan-only", cwd=workdir)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    shown = run_cli("run", "show", "last", cwd=workdir).stdout
    # the run keeps what was asked, not what it stood for: a resume or another worker plans from it
    assert f'"studies": ["{uid}"], "accessions": ["{accession}"], "patients": ["{patient}"]' in shown
    resumed = run_cli("resume", "last", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert set(client_b.ids("studies")) == {first, second} | of_patient


def test_a_selector_that_names_nothing_stops_before_any_run_and_keeps_the_id_private(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "1", "--instances", "1", "--seed", "6", cwd=workdir)
    patients = ["--patient", "PF006-00000", "--patient", "PF999-00042"]
    result = cli("transfer", "--from", "a", "--to", "b", *patients, cwd=workdir)
    assert result.returncode == 2
    assert "--patient #2 matches no study on a" in result.stderr
    assert "PF999" not in result.stderr + result.stdout  # a patient ID is shown with --log-phi only
    shown = cli("--log-phi", "transfer", "--from", "a", "--to", "b", "--patient", "PF999-00042", cwd=workdir)
    assert shown.returncode == 2 and "(PatientID PF999-00042)" in shown.stderr
    uid = cli("transfer", "--from", "a", "--to", "b", "--study", "1.2.3.999", cwd=workdir)
    assert uid.returncode == 2 and "--study matches no study on a" in uid.stderr
    assert "transfer" not in cli("runs", cwd=workdir).stdout  # refused before any run started
    assert client_b.ids("studies") == []


def test_every_query_checks_its_tags_and_dates_first(
    workdir: Path, config_file: Path, client_a: Orthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", "a", "--patients", "2", "--instances", "1", "--seed", "5", cwd=workdir)
    for command in (
        ["transfer", "--from", "a", "--to", "b"],
        ["download", "--from", "a", "--out", "dl"],
        ["compare", "a", "b"],
    ):
        typo = cli(*command, "--query", "PatientNmae=PF*", cwd=workdir)
        assert typo.returncode == 2, typo.stdout + typo.stderr
        assert "--query PatientNmae: not a DICOM tag keyword (did you mean PatientName?)" in typo.stderr
        date = cli(*command, "--query", "StudyDate=2020-13-01", cwd=workdir)
        assert date.returncode == 2 and "--query StudyDate '2020-13-01': no such date" in date.stderr
    assert not (workdir / "dl").exists() and client_b.ids("studies") == []
    # a tag written as Orthanc also takes it, and a date written with dashes, choose the studies
    studies = study_tags(client_a)
    chosen = min(studies, key=lambda study: studies[study]["StudyDate"])
    day = studies[chosen]["StudyDate"]
    query = ["--query", f"0010,0020={studies[chosen]['PatientID']}"]
    query += ["--query", f"StudyDate={day[:4]}-{day[4:6]}-{day[6:]}-"]
    result = run_cli("transfer", "--from", "a", "--to", "b", *query, cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert client_b.ids("studies") == [chosen]


def test_a_misspelt_peer_or_modality_stops_at_the_start_naming_those_there_are(
    workdir: Path, peer_source: LocalOrthanc, source: Orthanc, orthanc_b: LocalOrthanc, client_b: Orthanc
) -> None:
    cli("populate", "--to", peer_source.url, "--patients", "2", "--instances", "1", cwd=workdir)
    via_peer = ["transfer", "--from", peer_source.url, "--to", orthanc_b.url, "--via", "peer"]
    peer = cli(*via_peer, "--peer", "nosuch", cwd=workdir)
    assert peer.returncode == 2, peer.stdout + peer.stderr
    assert "has no Orthanc peer 'nosuch' (its OrthancPeers: to-a, to-b); name one of them with --peer" in (
        peer.stderr
    )
    node = f"{orthanc_b.aet}@127.0.0.1:{orthanc_b.dicom_port}"
    modality = cli("transfer", "--from", peer_source.url, "--to", node, "--modality", "nope", cwd=workdir)
    assert modality.returncode == 2, modality.stdout + modality.stderr
    assert "has no DICOM modality 'nope' (its DicomModalities: node-b); name one of them with --modality" in (
        modality.stderr
    )
    assert "transfer" not in cli("runs", cwd=workdir).stdout and client_b.ids("studies") == []
    # the source's own spelling is found whatever the case, and the copies go through it
    right = run_cli(*via_peer, "--peer", "TO-B", cwd=workdir)
    assert right.returncode == 0, right.stdout + right.stderr
    assert sorted(client_b.ids("studies")) == sorted(source.ids("studies"))


@pytest.fixture(scope="module")
def refusing_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    """An Orthanc configured as Orthanc ships (DicomAlwaysAllowFind false): it answers anyone's C-ECHO but
    aborts the association when an AE title missing from its DicomModalities asks a C-FIND."""
    server = LocalOrthanc(
        "R", tmp_path_factory.mktemp("orthanc-r"), aet="REFUSER", extra={"DicomAlwaysAllowFind": False}
    ).start()
    yield server
    server.kill()


def test_a_node_that_refuses_our_c_find_is_named_once_with_the_likely_cause(
    workdir: Path, tmp_path: Path, refusing_node: LocalOrthanc, orthanc_b: LocalOrthanc
) -> None:
    node = f"REFUSER@127.0.0.1:{refusing_node.dicom_port}"
    modalities = {"refuser": ["REFUSER", "127.0.0.1", refusing_node.dicom_port]}
    with LocalOrthanc("S", tmp_path / "orthanc-s", aet="SOURCES", modalities=modalities) as sender:
        cli("populate", "--to", sender.url, "--patients", "3", "--instances", "1", cwd=workdir)
        result = run_cli("transfer", "--from", sender.url, "--to", node, cwd=workdir)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.count("refuses our C-FIND") == 1
        assert "it likely does not know our AE title 'PACSFLOW'" in result.stderr
        assert "DicomModalities" in result.stderr and "transfer" not in run_cli("runs", cwd=workdir).stdout
    # compare asks the node by C-FIND too: the same line, once, and not a "differ" (exit 1)
    compared = cli("compare", orthanc_b.url, node, cwd=workdir)
    assert compared.returncode == 2, compared.stdout + compared.stderr
    assert compared.stderr.count("refuses our C-FIND (it aborts the association when asked)") == 1
