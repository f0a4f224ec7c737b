"""The one mapping of originals to pseudonyms, in the ledger: patients' pseudonyms and date shifts given
out once (safely, with many workers and machines), instance rows, exports, conflict checks, look-ups."""

from __future__ import annotations

import csv
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from pacsflow.anonymize.deidentify import Patient, Record
from pacsflow.anonymize.keys import Keys
from pacsflow.errors import BadInput, ConfigError
from pacsflow.ledger import Ledger
from pacsflow.ledger.schema import mapping, pseudonyms

KEYED, COUNTER, CSV = "keyed", "counter", "csv"
#: the columns of `mapping export` (the seed's mapping.csv): originals, pseudonyms, Orthanc IDs, when
EXPORT_COLUMNS = (
    "patient_id",
    "patient_name",
    "pseudonym",
    "accession",
    "new_accession",
    "study_uid",
    "new_study_uid",
    "series_uid",
    "new_series_uid",
    "sop_uid",
    "new_sop_uid",
    "study_date",
    "date_shift",
    "orthanc_before",
    "orthanc_after",
    "target",
    "run_id",
    "created_at",
)
FORMATS = ("mapping", "uid-pairs", "patient-pairs")


class MappingPseudonyms:
    """Patients' pseudonyms from the mapping; a new patient gets one (from GIVEN, a CSV's column, or the
    format: `{n}` counts up, `{hash}` is keyed), recorded before any of their files is written."""

    def __init__(
        self,
        ledger: Ledger,
        keys: Keys,
        pattern: str,
        *,
        run_id: str | None = None,
        given: dict[str, str] | None = None,
    ) -> None:
        self.ledger = ledger
        self.keys = keys
        self.pattern = pattern
        self.run_id = run_id
        self.given = given or {}
        self._known: dict[str, Patient] = {}
        self._pseudonyms: set[str] = set()
        self._lock = threading.Lock()

    def patient(self, patient_id: str, patient_name: str) -> Patient:
        """Raises BadInput when a CSV's pseudonym already stands for another patient, or the mapping gives
        this patient another pseudonym than the CSV."""
        known = self._known.get(patient_id)
        if known is not None:
            return known
        with self._lock:  # one patient's many files arrive together: one of them asks the ledger
            known = self._known.get(patient_id) or self._find_or_add(patient_id, patient_name)
            self._known[patient_id] = known
        return known

    @staticmethod
    def _taken(conn: Any, pseudonym: str) -> bool:
        query = select(pseudonyms.c.id).where(pseudonyms.c.pseudonym == pseudonym)
        return conn.execute(query).first() is not None

    def is_pseudonym(self, value: str) -> bool:
        """Whether the mapping gave out VALUE as a pseudonym (read once per value)."""
        if not value:
            return False
        if value in self._pseudonyms:
            return True
        with self.ledger.engine.connect() as conn:
            found = conn.execute(select(pseudonyms.c.id).where(pseudonyms.c.pseudonym == value)).first()
        if found is not None:
            self._pseudonyms.add(value)
        return found is not None

    def _find_or_add(self, patient_id: str, patient_name: str) -> Patient:
        for _attempt in range(20):
            row = self._row(patient_id)
            if row is not None:
                wanted = self.given.get(patient_id)
                if wanted and wanted != row.pseudonym:
                    raise BadInput(
                        "the CSV gives this patient another pseudonym than the mapping already has "
                        "(see `pacsflow mapping check`)"
                    )
                return Patient(row.pseudonym, row.date_shift)
            if self._add(patient_id, patient_name):
                continue  # read back what was stored: another process may have won the race
        raise BadInput("could not record a pseudonym for this patient (the mapping keeps changing)")

    def _row(self, patient_id: str) -> Any:
        with self.ledger.engine.connect() as conn:
            return conn.execute(
                select(pseudonyms.c.pseudonym, pseudonyms.c.date_shift).where(
                    pseudonyms.c.patient_id == patient_id
                )
            ).first()

    def _add(self, patient_id: str, patient_name: str) -> bool:
        """Insert this patient's row; False when nothing could be inserted for a reason a retry cannot
        mend (a given pseudonym taken by another patient raises BadInput)."""
        given = self.given.get(patient_id)
        try:
            with self.ledger.transaction() as conn:
                number = None
                if given:
                    pseudonym, source = given, CSV
                else:
                    if "{n" in self.pattern:
                        number = (conn.execute(select(func.max(pseudonyms.c.n))).scalar() or 0) + 1
                    pseudonym = self.pattern.format(n=number or 0, hash=self.keys.patient_hash(patient_id))
                    while number is not None and self._taken(conn, pseudonym):
                        number += 1  # a CSV gave this number's pseudonym to someone: count on past it
                        pseudonym = self.pattern.format(n=number, hash="")
                    source = COUNTER if number is not None else KEYED
                taken = conn.execute(
                    select(pseudonyms.c.patient_id).where(pseudonyms.c.pseudonym == pseudonym)
                ).first()
                if taken is not None:
                    if taken.patient_id == patient_id:
                        return True
                    if given or number is None:
                        raise BadInput(
                            "its pseudonym already stands for another patient in the mapping "
                            "(see `pacsflow mapping check`)"
                        )
                    return True  # a counter raced another process: count again
                conn.execute(
                    pseudonyms.insert().values(
                        patient_id=patient_id,
                        patient_name=patient_name,
                        pseudonym=pseudonym,
                        n=number,
                        date_shift=self.keys.date_shift(patient_id),
                        source=source,
                        run_id=self.run_id,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:
            return True  # another worker or machine added this patient (or took the number) meanwhile
        return True


def record_instances(ledger: Ledger, records: Iterable[dict[str, Any]], target: str, run_id: str) -> int:
    """Add instance rows (Record.as_dict() values) for copies written to TARGET; rows already there stay.

    Returns how many were new.
    """
    if ledger.is_postgres:
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(mapping).on_conflict_do_nothing(index_elements=["sop_uid", "new_sop_uid", "target"])
    now = time.time()
    added = 0
    batch: list[dict[str, Any]] = []

    def flush() -> int:
        if not batch:
            return 0
        with ledger.transaction() as conn:
            count = conn.execute(statement, batch).rowcount or 0
        batch.clear()
        return max(count, 0)

    for record in records:
        if record.get("already"):
            continue  # our own output passed on: its originals are in the row that made it
        row = {name: record.get(name) for name in EXPORT_COLUMNS if name in record}
        row["orthanc_before"] = Record(**_record_fields(record)).orthanc_before
        row["orthanc_after"] = record.get("orthanc_after") or Record(**_record_fields(record)).orthanc_after
        row.update(target=target, run_id=run_id, created_at=now)
        batch.append(row)
        if len(batch) >= 500:
            added += flush()
    added += flush()
    return added


def _record_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name, "") for name in Record.__dataclass_fields__ if name != "already"}


def write_private_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> int:
    """Write a CSV that holds identities: mode 0600 from its first byte, replaced atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    count = 0
    temporary.unlink(missing_ok=True)  # never write into a file (or through a link) someone left there
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                count += 1
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return count


def export(ledger: Ledger, path: Path, kind: str = "mapping") -> int:
    """Write the mapping to PATH: the seed's mapping.csv (every column), or `old,new` pairs of UIDs or of
    patients, as de-identification challenges score them. Returns the rows written."""
    if kind not in FORMATS:
        raise ConfigError(f"--format {kind!r}: use {', '.join(FORMATS)}")
    if kind == "mapping":
        return write_private_csv(path, EXPORT_COLUMNS, _rows(ledger, EXPORT_COLUMNS))
    if kind == "patient-pairs":
        with ledger.engine.connect() as conn:
            pairs = conn.execute(
                select(pseudonyms.c.patient_id, pseudonyms.c.pseudonym).order_by(pseudonyms.c.id)
            ).all()
        return write_private_csv(path, ("old", "new"), pairs)
    return write_private_csv(path, ("old", "new"), _uid_pairs(ledger))


def _rows(ledger: Ledger, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    when = columns.index("created_at") if "created_at" in columns else None
    with ledger.engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(
            select(*(mapping.c[name] for name in columns)).order_by(mapping.c.id)
        )
        for row in result:
            values = list(row)
            if when is not None:  # a time people read: ISO 8601 in UTC
                values[when] = _iso(values[when])
            yield tuple(values)


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


def _uid_pairs(ledger: Ledger) -> Iterator[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    for study, new_study, series, new_series, sop, new_sop in _rows(
        ledger, ("study_uid", "new_study_uid", "series_uid", "new_series_uid", "sop_uid", "new_sop_uid")
    ):
        for pair in ((study, new_study), (series, new_series), (sop, new_sop)):
            if pair not in seen:
                seen.add(pair)
                yield pair


@dataclass
class Conflict:
    """One problem `mapping check` found; VALUES name originals or pseudonyms (shown with --log-phi)."""

    kind: str
    message: str
    values: tuple[str, ...] = ()


def check(ledger: Ledger) -> list[Conflict]:
    """Conflicts in the mapping: one original with two pseudonyms, one pseudonym for two originals, an
    instance given two new UIDs, duplicate rows. An empty list means the mapping is consistent."""
    found: list[Conflict] = []
    with ledger.engine.connect() as conn:
        for table, name in ((pseudonyms, "pseudonyms"), (mapping, "mapping")):
            for patient_id, count in conn.execute(
                select(table.c.patient_id, func.count(func.distinct(table.c.pseudonym)))
                .group_by(table.c.patient_id)
                .having(func.count(func.distinct(table.c.pseudonym)) > 1)
            ):
                found.append(
                    Conflict("two pseudonyms", f"one patient has {count} pseudonyms ({name})", (patient_id,))
                )
            for pseudonym, count in conn.execute(
                select(table.c.pseudonym, func.count(func.distinct(table.c.patient_id)))
                .group_by(table.c.pseudonym)
                .having(func.count(func.distinct(table.c.patient_id)) > 1)
            ):
                found.append(
                    Conflict(
                        "shared pseudonym",
                        f"one pseudonym stands for {count} patients ({name})",
                        (pseudonym,),
                    )
                )
        # the mapping table against the pseudonyms table: a copy made under another pseudonym
        joined = conn.execute(
            select(mapping.c.patient_id, mapping.c.pseudonym, pseudonyms.c.pseudonym)
            .join(pseudonyms, pseudonyms.c.patient_id == mapping.c.patient_id)
            .where(mapping.c.pseudonym != pseudonyms.c.pseudonym)
            .distinct()
        ).all()
        for patient_id, used, recorded in joined:
            found.append(
                Conflict(
                    "two pseudonyms",
                    "instances carry another pseudonym than the patient's",
                    (patient_id, used, recorded),
                )
            )
        for column, new in (
            ("sop_uid", "new_sop_uid"),
            ("study_uid", "new_study_uid"),
            ("series_uid", "new_series_uid"),
        ):
            for original, count in conn.execute(
                select(mapping.c[column], func.count(func.distinct(mapping.c[new])))
                .group_by(mapping.c[column])
                .having(func.count(func.distinct(mapping.c[new])) > 1)
            ):
                found.append(
                    Conflict(
                        "two new UIDs",
                        f"one {column.split('_')[0]} UID was given {count} new UIDs",
                        (original,),
                    )
                )
            for replacement, count in conn.execute(
                select(mapping.c[new], func.count(func.distinct(mapping.c[column])))
                .group_by(mapping.c[new])
                .having(func.count(func.distinct(mapping.c[column])) > 1)
            ):
                found.append(
                    Conflict(
                        "shared UID",
                        f"one new {column.split('_')[0]} UID stands for {count} originals",
                        (replacement,),
                    )
                )
        for sop, target, count in conn.execute(
            select(mapping.c.sop_uid, mapping.c.target, func.count())
            .group_by(mapping.c.sop_uid, mapping.c.new_sop_uid, mapping.c.target)
            .having(func.count() > 1)
        ):
            found.append(Conflict("duplicate rows", f"{count} rows for one instance copy", (sop, target)))
    return found


def lookup(ledger: Ledger, value: str) -> list[dict[str, Any]]:
    """Re-identification for an authorised user: the patients (and their studies) behind a pseudonym, a
    new UID or a new accession number."""
    with ledger.engine.connect() as conn:
        patients = conn.execute(
            select(pseudonyms).where(or_(pseudonyms.c.pseudonym == value, pseudonyms.c.patient_id == value))
        ).all()
        studies = conn.execute(
            select(
                mapping.c.patient_id,
                mapping.c.patient_name,
                mapping.c.pseudonym,
                mapping.c.accession,
                mapping.c.new_accession,
                mapping.c.study_uid,
                mapping.c.new_study_uid,
                mapping.c.study_date,
                mapping.c.date_shift,
            )
            .where(
                or_(
                    mapping.c.pseudonym == value,
                    mapping.c.new_study_uid == value,
                    mapping.c.new_series_uid == value,
                    mapping.c.new_sop_uid == value,
                    mapping.c.new_accession == value,
                )
            )
            .distinct()
        ).all()
    found: list[dict[str, Any]] = [
        {
            "patient_id": row.patient_id,
            "patient_name": row.patient_name,
            "pseudonym": row.pseudonym,
            "date_shift": row.date_shift,
        }
        for row in patients
    ]
    found += [dict(row._mapping) for row in studies]
    return found
