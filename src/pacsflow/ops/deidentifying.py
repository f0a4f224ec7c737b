"""What every de-identifying operation shares: its profile settings fixed when the run starts, the
Deidentifier built from them and the secret, and the mapping rows written when the run finishes."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsflow.anonymize.deidentify import Deidentified, Deidentifier
from pacsflow.anonymize.keys import Keys
from pacsflow.anonymize.mapping import MappingPseudonyms, record_instances
from pacsflow.anonymize.profile import Profile, check_options, load_profile
from pacsflow.anonymize.verify import Finding, Verifier
from pacsflow.config import Settings
from pacsflow.errors import BadInput, ConfigError
from pacsflow.join import JoinTable
from pacsflow.ledger import DONE, FAILED, SKIPPED, Ledger, PlannedItem, RunInfo
from pacsflow.orthanc import Orthanc, orthanc_id
from pacsflow.wording import plural

VERIFY = "verify"
_LAST_PHASE = 1_000_000  # after every phase of the run: findings are recorded when all else is done


def keys_of(settings: Settings, params: Any) -> Keys:
    """The run's keys from the secret in the settings. Raises ConfigError when there is none, or it is not
    the one the run started with."""
    config = settings.anonymize
    secret = config.secret.get_secret_value() if config.secret is not None else None
    keys = Keys.from_text(
        secret,
        params.uid_root or config.uid_root,
        params.max_date_shift or config.max_date_shift,
    )
    if params.secret_check and params.secret_check != fingerprint(keys):
        raise ConfigError(
            "the anonymize secret is not the one this run started with: its pseudonyms and UIDs would "
            "not match (set the run's secret in [anonymize] secret or PACSFLOW_ANONYMIZE__SECRET)"
        )
    return keys


def fingerprint(keys: Keys) -> str:
    """A keyed fingerprint of the secret: tells two secrets apart, reveals nothing of either."""
    return keys.digest("fingerprint", "pacsflow").hex()[:12]


def settle(op: Any) -> Keys:
    """Fix the de-identification settings in OP's stored params (from `[anonymize]` where the command
    line gave none), so that a resume or a worker applies exactly the same profile. Returns the keys.

    Raises ConfigError: no secret, another secret than the run's, a bad option.
    """
    config = op.settings.anonymize
    p = op.p
    keys = keys_of(op.settings, p)
    if p.options is None:
        op.remember("options", [name.replace("_", "-") for name in check_options(config.options)])
    for name in ("pseudonym", "uid_root", "max_date_shift"):
        if getattr(p, name) is None:
            op.remember(name, getattr(config, name))
    if p.secret_check is None:
        op.remember("secret_check", fingerprint(keys))
    return keys


def profile_of(params: Any) -> Profile:
    return load_profile(check_options(params.options or ()))


def join_of(params: Any) -> JoinTable:
    """The CSV a de-identifying run joins by original PatientID (empty when none is given).

    Raises ConfigError for a CSV that cannot be used."""
    csv, key = getattr(params, "csv", None), getattr(params, "csv_key", None)
    if not csv or not key:
        return JoinTable(Path(), "", {})
    return JoinTable.load(Path(csv), key)


class Deidentifying:
    """The Deidentifier of one run, made when its first item needs it (the ledger is set by then)."""

    def __init__(self, op: Any, keys: Keys) -> None:
        self.op = op
        self.keys = keys
        self._deidentifier: Deidentifier | None = None
        self._lock = threading.Lock()

    def get(self) -> Deidentifier:
        if self._deidentifier is None:
            with self._lock:
                if self._deidentifier is None:
                    self._deidentifier = build_deidentifier(
                        self.op.ledger, self.keys, self.op.p, self.op.run_id
                    )
        return self._deidentifier


def build_deidentifier(ledger: Ledger, keys: Keys, params: Any, run_id: str | None) -> Deidentifier:
    """The Deidentifier of a run with PARAMS (its profile options, pseudonym format, CSV), its pseudonyms
    from the mapping in LEDGER. Raises ConfigError for a CSV that cannot be used."""
    from pacsflow import __version__

    join = join_of(params)
    given = {key: row["PatientID"] for key, row in join.values.items() if row.get("PatientID")}
    pseudonyms = MappingPseudonyms(ledger, keys, params.pseudonym, run_id=run_id, given=given)
    return Deidentifier(
        profile_of(params),
        keys,
        pseudonyms,
        allow_burned_in=params.allow_burned_in,
        join=join if join.values else None,
        version=__version__,
    )


@dataclass(frozen=True)
class CopyName:
    """What an instance on a server will be called once de-identified, known before it is downloaded."""

    instance: str
    pseudonym: str
    new_study_uid: str
    new_series_uid: str
    new_sop_uid: str

    @property
    def orthanc_id(self) -> str:
        return orthanc_id(self.pseudonym, self.new_study_uid, self.new_series_uid, self.new_sop_uid)

    @property
    def study_id(self) -> str:
        return orthanc_id(self.pseudonym, self.new_study_uid)

    def get(self, name: str) -> str:  # read like a Record's dict (ops.anonymize.output_path)
        return str(getattr(self, name))


def copy_names(
    server: Orthanc, study: str, info: dict[str, Any], deidentifier: Deidentifier
) -> list[CopyName]:
    """The names every instance of STUDY (INFO: its /studies resource) gets when de-identified: the
    patient's pseudonym from the mapping (recorded now if new) and the keyed UIDs."""
    tags = info.get("PatientMainDicomTags", {})
    patient_id, patient_name = str(tags.get("PatientID", "")).strip(), str(tags.get("PatientName", ""))
    join = deidentifier.join
    if join is not None and patient_id not in join.values:  # before the mapping gives them a pseudonym
        raise BadInput(f"no row for its patient in {join.path.name} (column {join.key_column})", where=study)
    if not patient_id:
        raise BadInput("no PatientID: it cannot get a pseudonym of its own; not de-identified", where=study)
    pseudonym = deidentifier.pseudonyms.patient(patient_id, patient_name).pseudonym
    new_study = deidentifier.new_uid(_tag(info, "StudyInstanceUID"))
    series = {
        one["ID"]: deidentifier.new_uid(_tag(one, "SeriesInstanceUID"))
        for one in server.children("studies", study, "series")
    }
    return [
        CopyName(
            instance["ID"],
            pseudonym,
            new_study,
            series.get(instance.get("ParentSeries", ""), ""),
            deidentifier.new_uid(_tag(instance, "SOPInstanceUID")),
        )
        for instance in server.children("studies", study, "instances")
    ]


def _tag(resource: Mapping[str, Any], name: str) -> str:
    """A main DICOM tag of an Orthanc resource as it lists it ('' when absent)."""
    return str(resource.get("MainDicomTags", {}).get(name, ""))


def deidentify_checked(deidentifier: Deidentifier, data: bytes, where: str) -> Deidentified:
    """DATA de-identified, then read back by the verifier against its own record before anything is
    written or sent: a result with a problem is refused (BadInput). The result knows the instances it
    refers to, for the run's final check that every reference leads somewhere."""
    result = deidentifier.apply(data, where)
    checked = Verifier().check(result.data, where, None if result.record.already else result.record.as_dict())
    if checked is None:
        raise BadInput("the de-identified result is not readable as DICOM; not written", where=where)
    if checked.problems:
        problems = "; ".join(checked.problems)
        raise BadInput(f"the de-identified result fails verification ({problems}); not written", where=where)
    result.references = checked.references
    return result


def dangling_references(ledger: Ledger, run: RunInfo, kinds: tuple[str, ...]) -> list[Finding]:
    """References in what RUN wrote or sent to instances that are neither among them nor in the mapping."""
    sops: set[str] = set()
    references: list[tuple[str, str]] = []
    for record in run_records(ledger, run, kinds):
        sops.add(record.get("new_sop_uid", ""))
        references += [(record.get("new_sop_uid", ""), uid) for uid in record.get("references", ())]
    return Verifier(ledger).dangling(references, sops)


def verified_lines(ledger: Ledger, run: RunInfo, kinds: tuple[str, ...]) -> list[str]:
    """The end of every de-identifying run: each file was verified before it was written or sent; now
    every reference must lead to an instance. A dangling one becomes a failed item (exit status 1)."""
    count = sum(1 for _ in run_records(ledger, run, kinds))
    findings = dangling_references(ledger, run, kinds)
    if findings:
        ledger.add_items(
            run.id,
            [
                PlannedItem(
                    VERIFY,
                    f"verify/{finding.where}",
                    {},
                    phase=_LAST_PHASE,
                    status=FAILED,
                    note=finding.problem,
                )
                for finding in findings
            ],
        )
        return [
            f"VERIFICATION FAILED: {plural(len(findings), 'reference')} leading to no instance (failed items)"
        ]
    return [
        f"verified: {plural(count, 'file')}, each before it was written or sent; every reference resolves"
    ]


def run_records(ledger: Ledger, run: RunInfo, kinds: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The de-identification records (Record.as_dict()) that a run's finished items carry."""
    for status in (DONE, SKIPPED):
        for item in ledger.items(run.id, status=status):
            if item.kind not in kinds or not item.result:
                continue
            found = item.result.get("anon")
            if isinstance(found, dict):
                yield found
            elif isinstance(found, list):
                yield from found


def write_mapping(ledger: Ledger, run: RunInfo, kinds: tuple[str, ...], target: str) -> int:
    """Mapping rows for every instance RUN de-identified into TARGET; returns how many were new."""
    return record_instances(ledger, run_records(ledger, run, kinds), target, run.id)
