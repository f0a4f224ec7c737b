"""Typed operation parameters: today's stored dicts validate and round-trip; bad ones name the parameter."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pacsflow.config import Settings
from pacsflow.errors import ConfigError, ParamsError, PreflightError
from pacsflow.ledger import Item, PlannedItem
from pacsflow.ops.base import Operation, Outcome, operation_class, register
from pacsflow.ops.params import (
    MODELS,
    FreeParams,
    TransferParams,
    params_model,
    validate_params,
)
from pacsflow.ops.transfer import Transfer

# The dicts `pacsflow` builds for each command today (cli.py), with the `workers` start_run adds: the
# ledgers hold exactly these, and resuming them must not change a thing.
SHAPE = {"patients": 10, "studies": 2, "series": 3, "instances": 50, "pixels": 512, "seed": 7}
STORED: list[tuple[str, dict[str, Any]]] = [
    ("populate", {"to": None, "out": "/data/out", "shape": SHAPE, "bad_files": True, "workers": 4}),
    ("populate", {"to": "main", "out": None, "shape": SHAPE, "bad_files": False, "workers": 4}),
    (
        "upload",
        {"to": "main", "label": None, "csv": None, "csv_key": None, "paths": ["/s", "/x.zip"], "workers": 8},
    ),
    (
        "upload",
        {
            "to": "http://10.0.0.7:8042",
            "label": "cohort",
            "csv": "/p/pseudonyms.csv",
            "csv_key": "PatientID",
            "paths": ["/scans"],
            "workers": 4,
        },
    ),
    (
        "roster-upload",
        {
            "to": "main",
            "label": None,
            "csv": None,
            "csv_key": None,
            "roster": "/d/Final.csv",
            "root": "/data/patients",
            "batch_size": 20,
            "where": {"LLM": "1"},
            "status_column": "Uploaded",
            "id_column": "UHID",
            "errors": "/d/Logs/UHID error/output.csv",
            "workers": 4,
        },
    ),
    (
        "transfer",
        {
            "from": "main",
            "to": "backup",
            "studies": ["6b9e-1", "6b9e-2"],
            "query": None,
            "via": None,
            "peer": None,
            "modality": None,
            "workers": 4,
        },
    ),
    (
        "transfer",
        {
            "from": "main",
            "to": "http://backup:8042",
            "studies": None,
            "query": {"PatientID": "PF*", "StudyDate": "20200101-20201231"},
            "via": "peer",
            "peer": "backup",  # found at the start and remembered for resume
            "modality": None,
            "workers": 4,
        },
    ),
    (
        "transfer",
        {
            "from": "main",
            "to": "PACS@10.0.0.5:104",
            "studies": None,
            "query": None,
            "via": None,
            "peer": None,
            "modality": "pacs",
            "workers": 4,
        },
    ),
    (
        "clone",
        {
            "from": "main",
            "to": "backup",
            "via": None,
            "peer": None,
            "modality": None,
            "workers": 4,
            "start_change": 812,
        },
    ),
    (
        "forward",
        {
            "from": "inbox",
            "to": ["pacs1", "PACS@10.0.0.5:104"],
            "workers": 4,
            "trigger": "new-instance",
            "modality_names": {"PACS@10.0.0.5:104": "pacs"},
        },
    ),
    ("download", {"from": "main", "out": "/export", "studies": None, "workers": 4}),
    ("download", {"from": "main", "out": "/export", "studies": ["6b9e-1"], "workers": 2}),
    (
        "anonymize",
        {
            "paths": ["/scans", "/x.zip"],
            "out": "/clean",
            "csv": "/p/pseudonyms.csv",
            "csv_key": "MRN",
            "options": ["retain-long-modified-dates", "clean-descriptors"],
            "allow_burned_in": False,
            "pseudonym": "ANON-{n:06d}",
            "uid_root": "2.25",
            "max_date_shift": 3650,
            "secret_check": "0a1b2c3d4e5f",
            "workers": 4,
        },
    ),
    (
        "anonymize-copy",
        {
            "from": "main",
            "to": None,
            "studies": None,
            "patients": ["PF001"],
            "query": None,
            "all": False,
            "delete_original": True,
            "csv": None,
            "csv_key": None,
            "options": ["retain-long-modified-dates"],
            "allow_burned_in": False,
            "pseudonym": "ANON-{hash}",
            "uid_root": "2.25",
            "max_date_shift": 3650,
            "secret_check": "0a1b2c3d4e5f",
            "workers": 4,
        },
    ),
    (
        "delete",
        {"workers": 4, "on": "main", "studies": ["6b9e-1"], "query": None, "all": False, "matched": 1},
    ),
    ("delete", {"workers": 4, "on": "main", "studies": None, "query": None, "all": True, "matched": 5}),
]


@pytest.mark.parametrize(("operation", "stored"), STORED)
def test_todays_stored_params_validate_and_round_trip(operation: str, stored: dict[str, Any]) -> None:
    original = dict(stored)
    assert validate_params(operation, stored) == original
    model = params_model(operation).parse(stored)
    assert model.stored() == original
    assert type(model).parse(model.stored()) == model
    assert stored == original  # checking never changes the caller's dict


@pytest.mark.parametrize(
    ("operation", "given", "defaults"),
    [
        # what `clone`, `forward` and `compare --transfer-missing` build before the run adds its findings
        ("clone", {"from": "a", "to": "b", "workers": 4}, {"via": None, "peer": None, "modality": None}),
        ("forward", {"from": "a", "to": ["b"], "workers": 4, "trigger": "stable-study"}, {}),
        (
            "transfer",
            {"from": "a", "to": "b", "studies": ["s1"], "workers": 4},
            {"query": None, "via": None, "peer": None, "modality": None},
        ),
    ],
)
def test_partial_params_are_stored_with_their_defaults(
    operation: str, given: dict[str, Any], defaults: dict[str, Any]
) -> None:
    stored = validate_params(operation, given)
    assert {key: stored[key] for key in given} == given
    assert {key: value for key, value in stored.items() if key not in given}.items() >= defaults.items()
    assert validate_params(operation, stored) == stored


@pytest.mark.parametrize("operation", sorted(MODELS))
def test_unknown_keys_are_refused_by_name(operation: str) -> None:
    stored = next(params for name, params in STORED if name == operation)
    with pytest.raises(ParamsError) as caught:
        validate_params(operation, {**stored, "bogus_option": 1})
    assert "bogus_option" in str(caught.value) and caught.value.params == ("bogus_option",)
    assert isinstance(caught.value, ConfigError) and caught.value.fatal


_DROP = object()


def _changed(operation: str, **changes: Any) -> dict[str, Any]:
    stored = dict(next(params for name, params in STORED if name == operation))
    for key, value in changes.items():
        key = key.rstrip("_")  # from_ -> from
        if value is _DROP:
            stored.pop(key)
        else:
            stored[key] = value
    return stored


@pytest.mark.parametrize(
    ("operation", "params", "message", "names"),
    [
        (
            "roster-upload",
            _changed("roster-upload", batch_size=0),
            "--batch-size 0: must be at least 1",
            ("batch_size",),
        ),
        (
            "roster-upload",
            _changed("roster-upload", root=None),
            "--roster needs --root DIR and --batch-size N",
            ("root",),
        ),
        (
            "roster-upload",
            _changed("roster-upload", batch_size=_DROP),
            "--roster needs --root DIR and --batch-size N",
            ("batch_size",),
        ),
        (
            "roster-upload",
            _changed("roster-upload", where=["LLM"]),
            "--where 'LLM': write COLUMN=VALUE",
            ("where",),
        ),
        ("transfer", _changed("transfer", via="bogus"), "--via 'bogus': use rest, peer or dicom", ("via",)),
        (
            "transfer",
            _changed("transfer", query={"PatientID": "PF*"}),
            "give --study or --query, not both",
            ("studies", "query"),
        ),
        ("transfer", _changed("transfer", studies=None, query=["PatientID"]), "write TAG=VALUE", ("query",)),
        ("transfer", _changed("transfer", from_=_DROP), "--from is required", ("from",)),
        (
            "forward",
            _changed("forward", trigger="x"),
            "--trigger 'x': use stable-study or new-instance",
            ("trigger",),
        ),
        ("forward", _changed("forward", to=[]), "--to: give at least 1", ("to",)),
        ("upload", _changed("upload", csv="/p/x.csv"), "--csv and --csv-key go together", ("csv", "csv_key")),
        ("upload", _changed("upload", paths=[]), "give files or folders to upload, or --roster", ("paths",)),
        (
            "upload",
            _changed("upload", roster="/d/Final.csv"),
            "upload takes no parameter 'roster'",
            ("roster",),
        ),
        (
            "populate",
            _changed("populate", to="main"),
            "give exactly one of --to SERVER or --out DIR",
            ("to", "out"),
        ),
        (
            "populate",
            _changed("populate", out=None),
            "give exactly one of --to SERVER or --out DIR",
            ("to", "out"),
        ),
        (
            "populate",
            _changed("populate", shape={**SHAPE, "pixels": 4}),
            "--pixels 4: must be at least 8",
            ("shape.pixels",),
        ),
        ("download", _changed("download", workers=0), "--workers 0: must be at least 1", ("workers",)),
        (
            "download",
            _changed("download", out=_DROP),
            "give one of --out DIR, --zip FILE or --per-patient-zip DIR",
            ("out", "zip", "per_patient_zip"),
        ),
        ("clone", _changed("clone", start_change="soon"), "start_change 'soon'", ("start_change",)),
    ],
)
def test_bad_values_raise_a_config_error_naming_the_parameter(
    operation: str, params: dict[str, Any], message: str, names: tuple[str, ...]
) -> None:
    with pytest.raises(ParamsError) as caught:
        validate_params(operation, params)
    assert message in str(caught.value)
    assert caught.value.params == names


def test_several_problems_are_named_in_one_error() -> None:
    with pytest.raises(ParamsError) as caught:
        validate_params("transfer", {"from": "main", "workers": 0, "studies": "6b9e"})
    text = str(caught.value)
    assert "--to is required" in text and "--workers 0" in text and "--study" in text
    assert set(caught.value.params) == {"to", "workers", "studies"}


def test_values_that_may_hold_secrets_or_patient_data_are_not_quoted() -> None:
    with pytest.raises(ParamsError) as caught:
        validate_params("transfer", {"from": ["http://bob:s3cret@h:8042"], "to": "b"})
    assert "s3cret" not in str(caught.value) and "--from" in str(caught.value)
    with pytest.raises(ParamsError) as caught:
        validate_params("upload", {"to": "a", "paths": [{"name": "Doe^John"}]})
    assert "Doe" not in str(caught.value) and "PATHS" in str(caught.value)


def test_python_callers_may_use_names_paths_and_models() -> None:
    by_name = validate_params("transfer", {"source": "main", "to": "backup", "query": ["PatientID=PF*"]})
    assert by_name["from"] == "main" and "source" not in by_name
    assert by_name["query"] == {"PatientID": "PF*"}
    model = TransferParams(source="main", to="backup")
    assert validate_params("transfer", model) == {**by_name, "query": None}
    assert validate_params("download", {"from": "a", "out": Path("/export")})["out"] == "/export"
    assert validate_params("forward", {"from": "a", "to": "b"})["to"] == ["b"]
    where = validate_params("roster-upload", _changed("roster-upload", where=["LLM = 1", "Site=A"]))["where"]
    assert where == {"LLM": "1", "Site": "A"}


def test_every_operation_has_a_documented_model() -> None:
    for name, model in MODELS.items():
        assert operation_class(name).Params is model is params_model(name)
        assert model.__doc__ and model.operation == name
        undocumented = [field for field, info in model.model_fields.items() if not info.description]
        assert not undocumented, f"{name}: {undocumented}"
        assert model.model_config.get("extra") == "forbid"
        model.model_json_schema()  # what a web form is built from


@register
class _Untyped(Operation):
    name = "params-test"

    def plan(self) -> Iterable[PlannedItem]:
        return []

    def do(self, item: Item) -> Outcome:
        return Outcome()


def test_operations_without_a_model_take_any_dict(tmp_path: Path) -> None:
    settings = Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    assert params_model("params-test") is FreeParams
    params = {"keys": ["ok-1"], "anything": {"nested": True}}
    op = _Untyped(settings, params)
    assert op.params is params and params == {"keys": ["ok-1"], "anything": {"nested": True}}
    with pytest.raises(ConfigError, match="does not know operation 'no-such-op'"):
        params_model("no-such-op")


def test_an_operation_checks_its_params_when_built(tmp_path: Path) -> None:
    settings = Settings(ledger=f"sqlite:///{tmp_path / 'l.db'}")
    with pytest.raises(ParamsError, match="--via 'bogus'"):
        Transfer(settings, {"from": "http://127.0.0.1:1", "to": "http://127.0.0.1:2", "via": "bogus"})
    # what compare --transfer-missing builds: stored with its defaults, in the very dict given (a caller
    # that adds a key before the run starts, as clone adds start_change, gets it stored)
    params = {"from": "http://127.0.0.1:1", "to": "http://127.0.0.1:2", "studies": ["s1"]}
    op = Transfer(settings, params)
    try:
        assert op.params is params and params["via"] is None and params["studies"] == ["s1"]
        assert op.p.source == "http://127.0.0.1:1" and op.via == "rest"
        op.remember("peer", "backup")  # found at the start: kept for resume
        assert op.peer == "backup" and params["peer"] == "backup"
        assert Transfer.Params.parse(params).peer == "backup"
    finally:
        op.close()


def test_preflight_error_lives_with_the_other_errors() -> None:
    from pacsflow.ops import servers

    assert servers.PreflightError is PreflightError
    assert PreflightError.fatal


def test_every_operation_module_is_named_in_the_lazy_registry() -> None:
    """operation_class imports only the module a run needs: the map names every operation's module."""
    import importlib
    import pkgutil

    import pacsflow.ops
    from pacsflow.ops.base import _REGISTRY, OPERATION_MODULES, Operation

    for module in pkgutil.iter_modules(pacsflow.ops.__path__):
        importlib.import_module(f"pacsflow.ops.{module.name}")
    found = {
        name: cls.__module__.rsplit(".", 1)[1]
        for name, cls in _REGISTRY.items()
        if issubclass(cls, Operation) and cls.__module__.startswith("pacsflow.ops.")
    }
    assert found == OPERATION_MODULES


def test_retrieve_and_migrate_refuse_days_that_do_not_exist() -> None:
    from pacsflow.ops.params import MigrateParams, RetrieveParams

    with pytest.raises(ConfigError, match="--from-date"):
        RetrieveParams.parse({"from": "pacs", "to": "out", "from_date": "2024-13-45"})
    with pytest.raises(ConfigError, match="--to-date"):
        MigrateParams.parse(
            {"from": "pacs", "to": "main", "from_date": "2024-02-01", "to_date": "2024-02-30"}
        )
    assert (
        RetrieveParams.parse({"from": "pacs", "to": "out", "from_date": "2024-02-29"}).from_date == "20240229"
    )
