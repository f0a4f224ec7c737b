"""Choosing studies: --query tags and dates checked before any server is asked; selectors resolved on a real
Orthanc, each of them required to name a study, patient data kept out of the messages."""

from __future__ import annotations

import pytest

from pacsflow.errors import ConfigError, public_text
from pacsflow.ops.params import DownloadParams, validate_params
from pacsflow.orthanc import Capabilities, Orthanc
from pacsflow.selection import (
    Selection,
    check_query,
    first_look,
    parse_query,
    resolve,
    study_date_range,
)
from pacsflow.synthetic import Shape, instance_bytes

SHAPE = Shape(patients=3, studies=2, instances=1, pixels=8, seed=12)


def test_a_misspelt_tag_is_refused_with_the_nearest_keyword() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_query(["PatientNmae=PF*"])
    assert "--query PatientNmae: not a DICOM tag keyword (did you mean PatientName?)" in caught.value.reason
    with pytest.raises(ConfigError) as caught:
        parse_query(["Xyzzy=1"])
    assert "not a DICOM tag keyword;" in caught.value.reason  # nothing close: no guess


def test_keywords_in_any_case_and_hex_tags_become_keywords() -> None:
    query = parse_query(
        ["patientid=PF*", "0008,0050=A12*", "(0008,1030)=CT*", "00100010=Doe*", "0011,0010=x"]
    )
    assert query == {
        "PatientID": "PF*",
        "AccessionNumber": "A12*",
        "StudyDescription": "CT*",
        "PatientName": "Doe*",
        "0011,0010": "x",  # a private tag has no keyword: Orthanc takes it as gggg,eeee
    }
    assert parse_query([]) is None and check_query({}) is None


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("20200101", "20200101"),
        ("2020-01-01", "20200101"),
        ("2020-01-01-2020-12-31", "20200101-20201231"),
        ("20200101-2020-12-31", "20200101-20201231"),
        ("2020-01-01-", "20200101-"),
        ("-2020-12-31", "-20201231"),
        ("", ""),
    ],
)
def test_study_dates_and_ranges_are_written_as_dicom_does(given: str, stored: str) -> None:
    assert parse_query([f"StudyDate={given}"]) == {"StudyDate": stored}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("2020-13-01", "--query StudyDate '2020-13-01': no such date"),
        ("2020-02-30", "no such date"),
        ("01/02/2020", "write a date (YYYYMMDD or YYYY-MM-DD) or a range"),
        ("2020-", "write a date (YYYYMMDD or YYYY-MM-DD) or a range"),
        ("2020*", "write a date"),
        ("20201231-20200101", "the range ends before it starts"),
    ],
)
def test_a_bad_study_date_is_refused(given: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_query([f"StudyDate={given}"])
    assert message in caught.value.reason


def test_a_patients_bad_birth_date_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_query(["PatientBirthDate=1961-02-30"])
    assert "--query PatientBirthDate: no such date" in caught.value.reason
    assert "1961" not in str(caught.value)


def test_from_and_to_dates() -> None:
    assert study_date_range("2020-01-01", None) == "20200101-"
    assert study_date_range(None, "20201231") == "-20201231"
    assert study_date_range("2020-01-01", "2020-12-31") == "20200101-20201231"
    assert study_date_range(None, None) is None
    with pytest.raises(ConfigError, match="--from-date '2020-31-01': no such date"):
        study_date_range("2020-31-01", None)
    with pytest.raises(ConfigError, match=r"--to-date '31\.12\.2020': write a date as YYYYMMDD"):
        study_date_range(None, "31.12.2020")
    with pytest.raises(ConfigError, match="is after --to-date"):
        study_date_range("2021-01-01", "2020-12-31")


def test_params_keep_what_was_asked_and_older_runs_stay_as_stored() -> None:
    asked = {"from": "a", "to": "b", "patients": [" PF1 "], "accessions": ["A1"], "studies": ["1.2.3"]}
    stored = validate_params("transfer", asked)
    assert stored["patients"] == ["PF1"] and stored["accessions"] == ["A1"] and stored["studies"] == ["1.2.3"]
    assert "matched" not in stored  # set by the run's start, not by the user
    old_download = {"from": "a", "out": "/export", "studies": None, "workers": 4}
    assert validate_params("download", old_download) == old_download  # no new keys in runs stored before
    with pytest.raises(ConfigError, match="give --accession or --query, not both"):
        validate_params(
            "download", {"from": "a", "out": "/x", "accessions": ["A1"], "query": ["PatientID=1"]}
        )
    with pytest.raises(ConfigError, match="--patient: give a value"):
        validate_params("transfer", {"from": "a", "to": "b", "patients": [""]})  # would match everyone


def fill(client: Orthanc) -> dict[str, dict[str, str]]:
    """SHAPE on the server: Orthanc study ID -> its PatientID, StudyInstanceUID and AccessionNumber."""
    for p in range(SHAPE.patients):
        for st in range(SHAPE.studies):
            client.upload(instance_bytes(SHAPE, p, st, 0, 0))
    studies = {}
    for info in client.find("Study", {}, expand=True):
        tags = {**info["MainDicomTags"], **info["PatientMainDicomTags"]}
        studies[info["ID"]] = {key: tags[key] for key in ("PatientID", "StudyInstanceUID", "AccessionNumber")}
    return studies


def test_selectors_resolve_to_the_union_of_their_studies(client_a: Orthanc) -> None:
    studies = fill(client_a)
    by_patient: dict[str, list[str]] = {}
    for study, tags in studies.items():
        by_patient.setdefault(tags["PatientID"], []).append(study)
    first, second, third = sorted(by_patient)
    one_of_second = by_patient[second][0]
    chosen = resolve(
        client_a,
        Selection(
            studies=(one_of_second.upper(), studies[by_patient[third][0]]["StudyInstanceUID"]),
            accessions=(studies[one_of_second]["AccessionNumber"],),  # the same study again: once
            patients=(first,),
        ),
    )
    expected = [one_of_second, by_patient[third][0], *sorted(by_patient[first])]
    assert chosen[:2] == expected[:2] and sorted(chosen[2:]) == sorted(expected[2:])
    assert len(chosen) == 4
    wildcard = resolve(client_a, Selection(patients=("PF012-*",)))
    assert sorted(wildcard) == sorted(studies)
    assert sorted(resolve(client_a, Selection())) == sorted(studies)
    assert sorted(resolve(client_a, Selection(query={"PatientID": first}))) == sorted(by_patient[first])


def test_many_orthanc_ids_are_checked_against_one_list(client_a: Orthanc) -> None:
    studies = sorted(fill(client_a))
    asked = studies * 4  # more than 20 IDs: one GET /studies instead of one request each
    assert resolve(client_a, Selection(studies=tuple(asked))) == studies
    bogus = "0" * 8 + "-00000000" * 4
    with pytest.raises(ConfigError, match=r"--study #25 matches no study"):
        resolve(client_a, Selection(studies=(*asked, bogus)))


def test_a_selector_naming_nothing_is_an_error_that_hides_its_value(client_a: Orthanc) -> None:
    studies = fill(client_a)
    patient = next(iter(studies.values()))["PatientID"]
    with pytest.raises(ConfigError) as caught:
        resolve(client_a, Selection(patients=(patient, "PF999-00000"), accessions=("NOPE",)))
    error = caught.value
    assert error.fatal  # exit status 2: the command, not the run, is wrong
    assert public_text(error).startswith("--accession, --patient #2 match no study on A (http://127.0.0.1:")
    assert "PF999" not in public_text(error) and "NOPE" not in public_text(error)
    assert public_text(error, log_phi=True).endswith("(AccessionNumber NOPE; PatientID PF999-00000)")
    # planning again after the start (a resume) takes what is still there and does not stop
    assert len(resolve(client_a, Selection(patients=(patient, "PF999-00000")), require_match=False)) == 2


def test_first_look_only_at_the_start_of_a_run(client_a: Orthanc) -> None:
    fill(client_a)
    started = validate_params("transfer", {"from": "a", "to": "b", "patients": ["PF999-00000"]})
    with pytest.raises(ConfigError):
        first_look(client_a, _Attrs(started))
    resumed = _Attrs({**started, "matched": 2})  # the run's start found 2: a resume does not look again
    assert first_look(client_a, resumed) is None
    assert first_look(client_a, _Attrs({"query": {"PatientID": "x"}})) is None  # a query may match nothing


class _Attrs:
    """Stored parameters as attributes, as the parameter models give them."""

    def __init__(self, data: dict[str, object]) -> None:
        self.__dict__.update(data)


def test_labels_on_orthanc_before_1_12_are_refused_before_the_run(client_a: Orthanc) -> None:
    with pytest.raises(ConfigError, match=r"--label needs Orthanc 1.12 or newer; .* runs 1\.10"):
        first_look(
            client_a, DownloadParams.model_validate({"from": "a", "out": "x", "labels": ["screening"]})
        )


class LabelledServer:
    """Orthanc 1.12's answers to a find with labels (Debian's 1.10 has none: this is the request only)."""

    display = "new"

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []

    def capabilities(self) -> Capabilities:
        return Capabilities("1.12.4", 24, "new")

    def find(self, level: str, query: dict[str, str], *, expand: bool = False, labels: tuple[str, ...] = ()):
        self.bodies.append({"Level": level, "Query": query, "Labels": list(labels)})
        return ["s1", "s2"] if labels else ["s2", "s3"]


def test_labels_narrow_a_query_and_named_studies() -> None:
    server = LabelledServer()
    assert resolve(server, Selection(query={"Modality": "CT"}, labels=("screening",))) == ["s1", "s2"]  # type: ignore[arg-type]
    assert server.bodies[-1] == {
        "Level": "Study",
        "Query": {"ModalitiesInStudy": "CT"},
        "Labels": ["screening"],
    }
    # --patient P (whose studies are s2 and s3) with --label: only the labelled one
    assert resolve(server, Selection(patients=("P",), labels=("screening",))) == ["s2"]  # type: ignore[arg-type]
