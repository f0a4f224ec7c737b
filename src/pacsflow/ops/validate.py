"""validate: each chosen series' instance count on an Orthanc server against the count Orthanc expects."""

# A run, so that the result is recorded: each series is an item of the ledger, a mismatch a failed item
# with its reason (`run show --failed`), and `retry` looks at the failed series again (their instances
# may have arrived since). A study item lists its series in one request and settles at once those whose
# counts agree or are unknown; only a mismatch gets a request of its own, a second look before it fails.

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from pacsflow.errors import BadInput, NotFound
from pacsflow.inventory import (
    COMPLETE,
    SeriesRow,
    mismatch_lines,
    series_row,
    sort_key,
    study_rows,
    summary,
)
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, Ledger, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.params import ValidateParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.progress import Units
from pacsflow.selection import Selection, first_look, resolve

log = logging.getLogger("pacsflow")
STUDY, SERIES = "study", "series"
#: a study item replaced by its series (progress counts series, not studies)
LISTED = "series listed"
UNKNOWN_NOTE = "no expected count known"
GONE = "no longer on the server"
#: what a series item keeps, in its payload (identities) and its result (counts)
_COUNTS = ("expected_instances", "present_instances", "orthanc_status")


@register
class Validate(Operation):
    """One item per study lists its series; one item per series holds its verdict."""

    name = "validate"
    unit = "series"
    Params = ValidateParams
    p: ValidateParams
    units = Units("series", {STUDY, SERIES}, opened=LISTED)

    def __init__(self, settings: Any, params: Mapping[str, Any] | ValidateParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a server that is not configured."""
        super().__init__(settings, params)
        self.server = connect(settings, self.p.on, self.p.workers or settings.workers)
        self._chosen: list[str] | None = None

    def preflight(self) -> None:
        """Raises PreflightError or Unauthorized (the server), ConfigError (a selector names nothing)."""
        preflight_server(self.server)
        self._chosen = first_look(self.server, self.p)
        if self._chosen is not None:
            self.remember("matched", len(self._chosen))

    def plan(self) -> Iterable[PlannedItem]:
        studies = self._chosen
        if studies is None:  # a query, every study, or a resume planning again
            studies = resolve(self.server, Selection.of(self.p), require_match=False)
            if not studies:
                log.warning("no study to validate on %s", self.server.display)
        for study in studies:
            yield PlannedItem(STUDY, f"s/{study}", {"study": study})

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (a series whose count is wrong), or what the server's answers raise."""
        if item.kind == STUDY:
            return self._list(item.payload["study"])
        return self._look_again(item.payload)

    def _list(self, study: str) -> Outcome:
        try:
            rows = study_rows(self.server, study)
        except NotFound:
            return Outcome(status=SKIPPED, note=GONE)
        return Outcome(note=LISTED, children=[_series_item(row) for row in rows])

    def _look_again(self, payload: Mapping[str, Any]) -> Outcome:
        """A series whose count was wrong when its study was listed, read again on its own."""
        try:
            found = self.server.resource("series", payload["orthanc_series"])
        except NotFound:
            return Outcome(status=SKIPPED, note=GONE)
        row = _with_counts(payload, series_row({}, found))
        if row.mismatch:
            error = BadInput(row.problem(), where=row.label())
            error.result = _counts(row)
            raise error
        if row.verdict == COMPLETE:
            return Outcome(result=_counts(row))
        return Outcome(status=SKIPPED, note=UNKNOWN_NOTE, result=_counts(row))

    def finish(self, run: RunInfo) -> list[str]:
        rows = rows_of_run(self.ledger, run.id)
        return [*mismatch_lines(rows, self.settings.log_phi), summary(rows)]

    def close(self) -> None:
        self.server.close()


def _counts(row: SeriesRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _COUNTS}


def _with_counts(payload: Mapping[str, Any], counts: Mapping[str, Any] | SeriesRow) -> SeriesRow:
    """The row a series item's PAYLOAD (identities) and COUNTS (a result, or a fresh row) make."""
    if isinstance(counts, SeriesRow):
        counts = _counts(counts)
    known = {name: payload[name] for name in SeriesRow.__dataclass_fields__ if name in payload}
    return SeriesRow(**{**known, **{name: counts.get(name) for name in _COUNTS if name in counts}})


def _series_item(row: SeriesRow) -> PlannedItem:
    """A series' item: settled when planned if its count agrees (done) or is unknown (skipped); pending,
    for a second look, if it does not."""
    identity = {name: value for name, value in asdict(row).items() if name not in _COUNTS}
    identity.pop("size_bytes", None)
    key = f"r/{row.orthanc_series}"
    if row.mismatch:
        return PlannedItem(SERIES, key, identity, phase=1)
    status, note = (DONE, None) if row.verdict == COMPLETE else (SKIPPED, UNKNOWN_NOTE)
    return PlannedItem(SERIES, key, identity, phase=1, status=status, note=note, result=_counts(row))


def rows_of_run(ledger: Ledger, run_id: str) -> list[SeriesRow]:
    """The series a validate run has checked (done, skipped as unknown, or failed), with their counts,
    sorted as an inventory is; a series gone from the server, or not looked at yet, is left out."""
    rows = []
    for item in ledger.items(run_id, kind=SERIES):
        if item.status not in (DONE, SKIPPED, FAILED) or not item.result:
            continue  # not looked at yet, or gone from the server
        rows.append(_with_counts(item.payload, item.result))
    return sorted(rows, key=sort_key)
