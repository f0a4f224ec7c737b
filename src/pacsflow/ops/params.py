"""Typed parameters of each operation: validated once when it is built, stored in the ledger as plain JSON."""

# One module for every model, not one per operation module: a service layer or a web form gets any model
# from here without importing the operations (httpx, the archive readers, the ledger), and the models
# share their fields (`from`/`to`, the CSV join, `workers`) and their error messages.

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pacsflow.errors import ConfigError, ParamsError
from pacsflow.selection import QUERY_EXAMPLE, SELECTORS, check_query, clean_selectors

#: the errors CSV of `upload --roster` when none is given (relative to the current folder)
DEFAULT_ERRORS = Path("Logs") / "UHID error" / "output.csv"
#: parameters named by another flag than `--` + their name, or by none at all
_FLAGS = {
    "studies": "--study",
    "accessions": "--accession",
    "patients": "--patient",
    "paths": "PATHS",
    "patient_list": "--patients",
    "modalities": "--modality",
}
_NOT_FLAGS = frozenset(
    {"shape", "modality_names", "start_change", "matched", "secret_check", "orthanc_name", "orthanc_aet"}
)
#: errors whose input is a number or one word: safe to quote (others may be paths, URLs or patient IDs)
_QUOTED = frozenset({"literal_error", "int_parsing", "int_from_float", "bool_parsing", "float_parsing"})
_MAX_SHOWN = 3


#: a file or folder name: a Path from a Python caller is kept as its text
#: a path, stored absolute: a resume or a worker may run in another folder than the run's start
PathText = Annotated[
    str,
    BeforeValidator(lambda value: os.fspath(value) if isinstance(value, os.PathLike) else value),
    AfterValidator(os.path.abspath),
]


class _Invalid(ValueError):
    """A check of ours failed: MESSAGE is the whole line; PARAMS are the parameters it concerns."""

    def __init__(self, message: str, *params: str) -> None:
        super().__init__(message)
        self.message = message
        self.params = params


def flag(loc: tuple[str | int, ...]) -> str:
    """How the command line names the parameter at LOC: `batch_size` -> `--batch-size`, `studies` ->
    `--study`, `shape.pixels` -> `--pixels`; parameters no flag sets keep their name."""
    names = [str(part) for part in loc if not isinstance(part, int)]
    if not names:
        return "parameters"
    if names[0] == "shape" and len(names) > 1:
        return f"--{names[1]}"
    if names[0] in _NOT_FLAGS:
        return ".".join(names)
    return _FLAGS.get(names[0], "--" + names[0].replace("_", "-"))


def _describe(error: Mapping[str, Any], operation: str) -> tuple[str, tuple[str, ...]]:
    """One pydantic error as a line for a person, and the parameters it names."""
    loc = tuple(error.get("loc", ()))
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _Invalid):
        return cause.message, cause.params or tuple(str(part) for part in loc[:1])
    name, kind, ctx = flag(loc), error.get("type", ""), error.get("ctx") or {}
    params = (".".join(str(part) for part in loc if not isinstance(part, int)),) if loc else ()
    value = error.get("input")
    quoted = f" {value!r}" if kind in _QUOTED or isinstance(value, int | float) else ""
    if kind == "extra_forbidden":
        return f"{operation} takes no parameter {'.'.join(map(str, loc))!r}", params
    if kind == "missing":
        return f"{name} is required", params
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", "")
        return f"{name}{quoted}: use {choices}", params
    if kind == "greater_than_equal":
        return f"{name}{quoted}: must be at least {ctx.get('ge')}", params
    if kind == "less_than_equal":
        return f"{name}{quoted}: must be at most {ctx.get('le')}", params
    if kind == "too_short":
        return f"{name}: give at least {ctx.get('min_length')}", params
    message = str(error.get("msg", "invalid"))
    return f"{name}{quoted}: {message[:1].lower()}{message[1:]}", params


def params_error(exc: ValidationError, operation: str) -> ParamsError:
    """EXC as one ConfigError whose message names each bad parameter (the first three, and how many more)."""
    lines: list[str] = []
    names: list[str] = []
    for error in exc.errors():
        line, params = _describe(error, operation)
        if line not in lines:
            lines.append(line)
        names.extend(param for param in params if param not in names)
    more = f"; and {len(lines) - _MAX_SHOWN} more" if len(lines) > _MAX_SHOWN else ""
    return ParamsError("; ".join(lines[:_MAX_SHOWN]) + more, params=names)


def _pairs(value: Any, option: str, example: str) -> Any:
    """`["A=1", "B=2"]` (as typed on the command line) -> `{"A": "1", "B": "2"}`; a mapping stays as it is."""
    if not isinstance(value, list | tuple):
        return value
    pairs: dict[str, str] = {}
    for condition in value:
        key, sep, text = str(condition).partition("=")
        if not sep or not key.strip():
            raise _Invalid(f"{option} {condition!r}: write {example}", option.lstrip("-"))
        pairs[key.strip()] = text.strip()
    return pairs


class BaseParams(BaseModel):
    """What every parameter model can do: check a dict as stored, and give the dict to store."""

    #: the operation's name, for messages
    operation: ClassVar[str] = "this operation"

    @classmethod
    def parse(cls, data: Mapping[str, Any] | BaseModel) -> Self:
        """DATA (a dict as the ledger stores it, or a model) checked.

        Raises ParamsError (a ConfigError) naming each bad parameter.
        """
        if isinstance(data, BaseModel):
            data = data.model_dump(by_alias=True)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise params_error(exc, cls.operation) from None

    def stored(self) -> dict[str, Any]:
        """The parameters as the ledger keeps them: JSON, keyed by the names the command line uses."""
        return self.model_dump(by_alias=True, mode="json")


class FreeParams(BaseParams):
    """Any parameters, unchecked: operations that declare no model (test operations)."""

    model_config = ConfigDict(extra="allow")


class OpParams(BaseParams):
    """Base of the operations' parameters: unknown keys are refused, `from` is also `source` in Python."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    workers: int | None = Field(
        None, ge=1, le=256, description="parallel workers; also sizes each server's connection pool"
    )


class ShapeParams(BaseModel):
    """How much synthetic data `populate` generates, and how big each image is."""

    model_config = ConfigDict(extra="forbid")

    patients: int = Field(1, ge=1, description="patients")
    studies: int = Field(1, ge=1, description="studies per patient")
    series: int = Field(1, ge=1, description="series per study")
    instances: int = Field(1, ge=1, description="instances per series")
    pixels: int = Field(64, ge=8, le=4096, description="image rows and columns (16-bit)")
    seed: int = Field(0, description="same seed, same data")


class PopulateParams(OpParams):
    """populate: generate synthetic studies (deterministic) into a folder or an Orthanc server."""

    operation = "populate"

    to: str | None = Field(None, description="Orthanc server (name or URL) to load into")
    out: PathText | None = Field(None, description="folder to write files into")
    shape: ShapeParams = Field(default_factory=ShapeParams, description="what to generate")
    bad_files: bool = Field(False, description="also write broken files (with --out)")

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.to is None) == (self.out is None):
            raise _Invalid("give exactly one of --to SERVER or --out DIR", "to", "out")
        return self


class _Deidentify(BaseModel):
    """How instances are de-identified: the profile's options and pseudonym settings, taken from
    `[anonymize]` when the run starts and stored with it (a resume applies the same profile)."""

    #: the fields of a de-identifying run: left out of the stored dict of a run that does not de-identify,
    #: so that runs stored before de-identification existed keep their parameters exactly
    DEIDENTIFY: ClassVar[tuple[str, ...]] = (
        "options",
        "allow_burned_in",
        "pseudonym",
        "uid_root",
        "max_date_shift",
        "secret_check",
    )

    options: list[str] | None = Field(
        None, description="PS3.15 options (e.g. retain-long-modified-dates); default: [anonymize] options"
    )
    allow_burned_in: bool = Field(
        False, description="also de-identify files that may show burned-in text (check their pixels!)"
    )
    pseudonym: str | None = Field(None, description="pseudonym format, e.g. ANON-{n:06d} or ANON-{hash}")
    uid_root: str | None = Field(None, description="root of new UIDs (default 2.25)")
    max_date_shift: int | None = Field(None, ge=1, le=36500, description="dates move back 1..N days")
    secret_check: str | None = Field(
        None, description="found at the start: a keyed fingerprint of the secret (a resume must use the same)"
    )

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        if value is None:
            return None
        from pacsflow.anonymize.profile import check_options

        names = [value] if isinstance(value, str) else list(value)
        try:
            return [name.replace("_", "-") for name in check_options(names)]
        except ConfigError as exc:
            raise _Invalid(exc.reason, "options") from None


class _MaybeDeidentify(_Deidentify):
    """An operation that de-identifies on the way when asked (`--anonymize`)."""

    anonymize: bool = Field(False, description="de-identify every instance on the way (PS3.15 profile)")

    def stored(self) -> dict[str, Any]:
        data = super().stored()  # type: ignore[misc]
        if not data.get("anonymize"):
            # runs stored before de-identification existed keep their parameters exactly
            for name in ("anonymize", *self.DEIDENTIFY):
                if not data.get(name):
                    data.pop(name, None)
        return data


class _CsvJoin(BaseModel):
    """A CSV joined to the DICOM (R4): its key column names a patient (or a roster row), its other
    columns are DICOM keywords whose values are written in; when de-identifying, the key is the original
    PatientID and the PatientID column is that patient's pseudonym."""

    csv: PathText | None = Field(None, description="CSV of values to write into the DICOM (join)")
    csv_key: str | None = Field(
        None, description="its key column: the PatientID (the original one when de-identifying) or roster ID"
    )

    @model_validator(mode="after")
    def _join(self) -> Self:
        if (self.csv is None) != (self.csv_key is None):
            raise _Invalid("--csv and --csv-key go together", "csv", "csv_key")
        return self


class _UploadCommon(_MaybeDeidentify, _CsvJoin, OpParams):
    """What both kinds of upload take: the server, a label, a CSV join, and de-identification on the way."""

    to: str = Field(description="Orthanc server (name or URL)")
    label: str | None = Field(None, description="Orthanc label for every study (Orthanc 1.12+)")


class UploadParams(_UploadCommon):
    """upload: send DICOM files, folders (recursive) and ZIP/TAR archives, skipping what the server holds."""

    operation = "upload"

    paths: list[PathText] = Field(description="files, folders (recursive) and ZIP/TAR archives")

    @model_validator(mode="before")
    @classmethod
    def _some_paths(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("paths"):
            raise _Invalid("give files or folders to upload, or --roster", "paths")
        return data


class RosterUploadParams(_UploadCommon):
    """roster-upload (`upload --roster`): a roster CSV's patient folders, in batches of rows, each row
    marked uploaded once every instance of its folder is verified on the server."""

    operation = "roster-upload"

    roster: PathText = Field(description="roster CSV whose rows name patient folders")
    root: PathText = Field(description="folder holding the roster's patient folders")
    batch_size: int = Field(ge=1, description="roster rows per batch")
    where: dict[str, str] = Field(
        default_factory=dict, description="COLUMN=VALUE a roster row must have (each of them)"
    )
    status_column: str = Field("Uploaded", description="roster column set to 1 when done")
    id_column: str = Field("UHID", description="roster column naming the patient folder")
    errors: PathText = Field(
        str(DEFAULT_ERRORS), validate_default=True, description="errors CSV (rows that could not be uploaded)"
    )

    @model_validator(mode="before")
    @classmethod
    def _root_and_batches(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and (data.get("root") is None or data.get("batch_size") is None):
            missing = [name for name in ("root", "batch_size") if data.get(name) is None]
            raise _Invalid("--roster needs --root DIR and --batch-size N", *missing)
        return data

    @field_validator("where", mode="before")
    @classmethod
    def _where(cls, value: Any) -> Any:
        return _pairs(value, "--where", "COLUMN=VALUE") if value is not None else {}


class CopyParams(OpParams):
    """What transfer and clone share: the two sides and how the copies travel."""

    source: str = Field(alias="from", description="source Orthanc server (name or URL)")
    to: str = Field(description="destination Orthanc server, or DICOM node (name or AET@host:port)")
    via: Literal["rest", "peer", "dicom"] | None = Field(
        None, description="rest (default for a server), peer (the source sends), dicom (default for a node)"
    )
    peer: str | None = Field(
        None, description="with via peer: the source's name for the peer (found by URL when not given)"
    )
    modality: str | None = Field(
        None, description="with a DICOM node: the source's name for it (found by AET, host and port)"
    )


class SelectParams(OpParams):
    """What commands that pick studies share (see pacsflow.selection): selectors, whose matches are
    joined, or a query; neither takes every study. The run stores them as given: a resume or a worker
    sees what the user asked for."""

    #: parameters newer than the runs some ledgers hold: left out of the stored dict while unset, so
    #: that those runs' parameters stay exactly as they were stored
    LATER: ClassVar[frozenset[str]] = frozenset({"accessions", "patients", "matched", "labels"})

    studies: list[str] | None = Field(
        None, description="Orthanc study IDs or StudyInstanceUIDs (default: every study)"
    )
    accessions: list[str] | None = Field(None, description="AccessionNumbers of studies (* wildcards)")
    patients: list[str] | None = Field(None, description="PatientIDs whose studies to take (* wildcards)")
    query: dict[str, str] | None = Field(
        None, description="TAG=VALUE the studies match (* wildcards, date ranges); not with selectors"
    )
    matched: int | None = Field(
        None, ge=0, description="found at the start: studies the selectors named (not looked up again)"
    )
    labels: list[str] | None = Field(
        None, description="Orthanc labels every chosen study carries (Orthanc 1.12+); narrow the rest"
    )

    @field_validator("studies", "accessions", "patients", mode="before")
    @classmethod
    def _selectors(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value  # None, or a wrong type the field itself refuses
        try:
            return clean_selectors(value, info.field_name)
        except ConfigError as exc:
            raise _Invalid(exc.reason, info.field_name) from None

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> Any:
        query = _pairs(value, "--query", QUERY_EXAMPLE) or None
        if not isinstance(query, Mapping):
            return query
        try:
            return check_query(query)
        except ConfigError as exc:
            raise _Invalid(exc.reason, "query") from None

    @model_validator(mode="after")
    def _selectors_or_query(self) -> Self:
        given = [name for name in SELECTORS if getattr(self, name)]
        if given and self.query:
            raise _Invalid(f"give {SELECTORS[given[0]]} or --query, not both", given[0], "query")
        return self

    def stored(self) -> dict[str, Any]:
        data = super().stored()
        for name in self.LATER:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class TransferParams(SelectParams, CopyParams):
    """transfer: copy what the destination lacks, study by study, then verify each study."""

    operation = "transfer"


class CloneParams(CopyParams):
    """clone: copy everything to another server; its follower then copies each new instance."""

    operation = "clone"

    start_change: int = Field(
        0, ge=0, description="the source's last change when the run started: the follower reads on from there"
    )


class ForwardParams(OpParams):
    """forward: send each stable study (or each new instance) to every destination, then delete it from
    the source once all of them hold it."""

    operation = "forward"

    source: str = Field(alias="from", description="source Orthanc server (e.g. an inbox)")
    to: list[str] = Field(min_length=1, description="destination servers or DICOM nodes")
    trigger: Literal["stable-study", "new-instance"] = Field(
        "stable-study", description="stable-study (whole studies) or new-instance (each at once)"
    )
    modality_names: dict[str, str] = Field(
        default_factory=dict,
        description="found at the start: the source Orthanc's name for each DICOM node destination",
    )

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class _PatientZips(BaseModel):
    """One ZIP per patient, named as seed 004 names them (see pacsflow.layout)."""

    per_patient_zip: PathText | None = Field(
        None, description="folder of one ZIP per patient, <PatientID><delimiter><series count>.zip"
    )
    delimiter: str | None = Field(
        None, description="between PatientID and series count in per-patient ZIP names (__seriesCount)"
    )

    @model_validator(mode="after")
    def _delimiter(self) -> Self:
        if self.delimiter is not None and not self.per_patient_zip:
            raise _Invalid("--delimiter goes with --per-patient-zip", "delimiter")
        if self.delimiter is not None and (not self.delimiter or "/" in self.delimiter):
            raise _Invalid("--delimiter: a non-empty text without /", "delimiter")
        return self


class DownloadParams(_MaybeDeidentify, _PatientZips, SelectParams):
    """download: fetch studies into a folder tree, one ZIP, or one ZIP per patient (see pacsflow.layout)."""

    operation = "download"
    # download took no query, ZIPs or labels before: unset, they stay out of what older runs stored
    LATER = SelectParams.LATER | {"query", "zip", "per_patient_zip", "delimiter", "out"}

    source: str = Field(alias="from", description="Orthanc server (name or URL)")
    out: PathText | None = Field(None, description="folder: Patient/Study/Series/instance.dcm")
    zip: PathText | None = Field(None, description="one ZIP file with the same layout, stored entries")

    @model_validator(mode="after")
    def _one_output(self) -> Self:
        outputs = [name for name in ("out", "zip", "per_patient_zip") if getattr(self, name)]
        if len(outputs) != 1:
            raise _Invalid(
                "give one of --out DIR, --zip FILE or --per-patient-zip DIR", "out", "zip", "per_patient_zip"
            )
        return self


class AnonymizeParams(_Deidentify, _CsvJoin, OpParams):
    """anonymize: de-identify files, folders and archives into a clean tree (PS3.15 Basic Profile)."""

    operation = "anonymize"

    paths: list[PathText] = Field(description="files, folders (recursive) and ZIP/TAR archives")
    out: PathText = Field(description="folder for the de-identified tree Pseudonym/Study/Series/SOP.dcm")

    @model_validator(mode="before")
    @classmethod
    def _some_paths(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("paths"):
            raise _Invalid("give files or folders to de-identify", "paths")
        return data


class AnonymizeCopyParams(_Deidentify, _CsvJoin, SelectParams):
    """anonymize-copy (`anonymize --on`, `transfer --anonymize`): de-identified copies of studies, on the
    server itself or onto another, with the same pseudonyms and UIDs as local runs; with delete_original,
    each original instance whose copy was verified is deleted."""

    operation = "anonymize-copy"

    source: str = Field(alias="from", description="Orthanc server (name or URL) whose studies are copied")
    to: str | None = Field(None, description="Orthanc server to copy onto (default: the same server)")
    all: bool = Field(False, description="every study (not already a de-identified copy)")
    delete_original: bool = Field(
        False, description="delete each original instance once its copy is verified"
    )

    @model_validator(mode="after")
    def _something_chosen(self) -> Self:
        named = any(getattr(self, name) for name in SELECTORS) or bool(self.query)
        if named == self.all:
            raise _Invalid(
                "give --study, --patient, --accession or --query, or --all (not both)",
                *(["all"] if self.all else ["studies"]),
            )
        return self


class DeleteParams(SelectParams):
    """delete: remove studies from an Orthanc server, each deletion verified and recorded in the ledger.
    Nothing here means "every study": that takes `all`, said on purpose."""

    operation = "delete"

    on: str = Field(description="Orthanc server (name or URL) to delete from")
    all: bool = Field(False, description="every study on the server")

    @model_validator(mode="after")
    def _something_chosen(self) -> Self:
        named = any(getattr(self, name) for name in SELECTORS) or bool(self.query)
        named = named or bool(getattr(self, "labels", None))
        if named == self.all:
            raise _Invalid(
                "give --study, --accession, --patient or --query, or --all (not both)",
                *(["all"] if self.all else ["studies"]),
            )
        return self


#: the model of each operation, by the name its runs are stored under
MODELS: dict[str, type[OpParams]] = {
    "populate": PopulateParams,
    "upload": UploadParams,
    "roster-upload": RosterUploadParams,
    "transfer": TransferParams,
    "clone": CloneParams,
    "forward": ForwardParams,
    "download": DownloadParams,
    "anonymize": AnonymizeParams,
    "anonymize-copy": AnonymizeCopyParams,
    "delete": DeleteParams,
}


def params_model(operation: str) -> type[BaseParams]:
    """The parameter model of OPERATION (for a form: `.model_json_schema()`; to check: `.parse(dict)`).

    Raises ConfigError for an operation this pacsflow does not know.
    """
    if operation in MODELS:
        return MODELS[operation]
    from pacsflow.ops.base import operation_class  # operations registered elsewhere (tests)

    return operation_class(operation).Params


def validate_params(operation: str, data: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """DATA checked against OPERATION's model, as the ledger would store it.

    Raises ParamsError (a ConfigError) naming each bad parameter, ConfigError for an unknown operation.
    """
    return params_model(operation).parse(data).stored()


class ValidateParams(SelectParams):
    """validate: check each chosen series' instance count against the count Orthanc expects for it."""

    operation = "validate"

    on: str = Field(description="Orthanc server (name or URL) whose series are checked")


def _dicom_date(value: Any) -> Any:
    """YYYYMMDD or YYYY-MM-DD as DICOM's YYYYMMDD."""
    if not isinstance(value, str):
        return value
    from datetime import datetime

    text = value.strip().replace("-", "")
    try:
        datetime.strptime(text, "%Y%m%d")  # a real day: 2024-13-45 is refused
    except ValueError:
        raise ValueError("a date like 2024-01-31 or 20240131") from None
    return text


DicomDate = Annotated[str, BeforeValidator(_dicom_date)]


class _NodeClient(BaseModel):
    """What a command that queries a DICOM node takes: our AE title and one rate limit for the node."""

    aet: str | None = Field(None, min_length=1, max_length=16, description="our AE title [settings]")
    rate: str | None = Field(None, description="at most this many requests to the node, e.g. 700/min")

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            from pacsflow.pacing import parse_rate

            try:
                parse_rate(value)
            except ConfigError as exc:
                raise _Invalid(exc.reason, "rate") from None
        return value


class RetrieveParams(_NodeClient, _PatientZips, OpParams):
    """retrieve: find patients, their studies and series on a DICOM node, then C-MOVE or C-GET each
    series into a folder or an Orthanc, check its count, and (optionally) ZIP each patient."""

    operation = "retrieve"

    source: str = Field(alias="from", description="DICOM node (name or AET@host:port)")
    to: str = Field(description="folder (PatientID/StudyUID/SeriesUID/SOPUID.dcm) or Orthanc server")
    patient_list: PathText | None = Field(
        None, description="file of PatientIDs (one per line, or a CSV with a PatientID or UHID column)"
    )
    select: str | None = Field(
        None, description="MODULE:FUNCTION or FILE.py:FUNCTION: called with each patient's attributes"
    )
    from_date: DicomDate | None = Field(None, description="studies from this date (StudyDate)")
    to_date: DicomDate | None = Field(None, description="studies up to this date (StudyDate)")
    modalities: list[str] | None = Field(None, description="only series of these modalities (CT, MR...)")
    method: Literal["move", "get"] = Field(
        "move", description="move (the node sends to our storage SCP on --port) or get (same association)"
    )
    port: int | None = Field(None, gt=0, lt=65536, description="with move: our storage SCP's port [settings]")

    @field_validator("select")
    @classmethod
    def _select(cls, value: str | None) -> str | None:
        if value is not None and (":" not in value or not all(value.rsplit(":", 1))):
            raise _Invalid("--select: give MODULE:FUNCTION or FILE.py:FUNCTION", "select")
        if value is not None and value.rsplit(":", 1)[0].endswith(".py"):
            where, name = value.rsplit(":", 1)
            value = f"{os.path.abspath(where)}:{name}"  # a resume or a worker may run in another folder
        return value

    @field_validator("modalities", mode="before")
    @classmethod
    def _modalities(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            value = [str(one).strip().upper() for one in value if str(one).strip()] or None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.from_date and self.to_date and self.from_date > self.to_date:
            raise _Invalid("--from-date is after --to-date", "from_date", "to_date")
        return self


class MigrateParams(_NodeClient, OpParams):
    """migrate: move a date range of studies from a DICOM node into an Orthanc, day by day (seed 002's
    PacsMigrator), each study's instance count checked on the Orthanc."""

    operation = "migrate"

    source: str = Field(alias="from", description="DICOM node (name or AET@host:port)")
    to: str = Field(description="Orthanc server the studies go into (the node must know its AET)")
    from_date: DicomDate = Field(description="first day (StudyDate)")
    to_date: DicomDate = Field(description="last day (StudyDate)")
    order: Literal["newest-first", "oldest-first"] = Field(
        "newest-first", description="which end of the range goes first"
    )
    via: Literal["orthanc", "dicom"] = Field(
        "orthanc",
        description="orthanc (the Orthanc asks the node, /modalities/{name}/move) or dicom (our C-MOVE)",
    )
    orthanc_name: str | None = Field(
        None, description="found at the start: the Orthanc's name for the node among its DicomModalities"
    )
    orthanc_aet: str | None = Field(None, description="found at the start: the Orthanc's own AE title")

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.from_date > self.to_date:
            raise _Invalid("--from-date is after --to-date", "from_date", "to_date")
        return self
