"""delete: remove studies from an Orthanc server, verify each is gone, and record each in the ledger."""

# One item deletes a batch of studies with one `POST /tools/bulk-delete` (Orthanc 1.9.4+), or one study
# with `DELETE /studies/{id}` on an older server. Before deleting, each study's UID and counts are read, so
# that the item's result is the record of what went; after, each study is looked up again: a deletion is
# done when the server no longer has the study, not when it said OK.

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from pacsflow.errors import BadInput, NotFound
from pacsflow.ledger import DONE, FAILED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.params import DeleteParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.orthanc import Orthanc
from pacsflow.selection import Selection, first_look, resolve
from pacsflow.wording import plural

log = logging.getLogger("pacsflow")

DELETION = "deletion"  # the one item kind: the studies of its payload's `ids`
#: studies per bulk-delete item: few enough that a failed request holds back little, many enough that
#: a whole archive is not one request per study
BATCH_SIZE = 50
ALREADY_DELETED = "already deleted"


@dataclass(frozen=True)
class StudyFacts:
    """One study as the server holds it right now. PATIENT_ID, DATE and DESCRIPTION identify people:
    they are shown only with --log-phi and never recorded (see `record`)."""

    id: str
    uid: str
    patient: str  # Orthanc's patient ID (a hash), to count patients
    series: int
    instances: int
    bytes: int
    patient_id: str = ""
    date: str = ""
    description: str = ""

    def record(self) -> dict[str, Any]:
        """What the ledger keeps of a deleted study: enough to say which it was, nothing about its patient."""
        return {
            "id": self.id,
            "uid": self.uid,
            "series": self.series,
            "instances": self.instances,
            "bytes": self.bytes,
        }


def study_facts(server: Orthanc, study: str) -> StudyFacts | None:
    """STUDY (an Orthanc ID) on SERVER, or None when the server does not have it.

    Raises what the server's answers raise, NotFound excepted.
    """
    try:
        info = server.resource("studies", study)
        statistics = server.get_json(f"/studies/{study}/statistics")
    except NotFound:
        return None
    tags = info.get("MainDicomTags", {})
    return StudyFacts(
        id=study,
        uid=str(tags.get("StudyInstanceUID", "")),
        patient=str(info.get("ParentPatient", "")),
        series=int(statistics.get("CountSeries", len(info.get("Series", [])))),
        instances=int(statistics.get("CountInstances", 0)),
        bytes=int(statistics.get("DiskSize", 0)),  # Orthanc writes sizes as strings
        patient_id=str(info.get("PatientMainDicomTags", {}).get("PatientID", "")),
        date=str(tags.get("StudyDate", "")),
        description=str(tags.get("StudyDescription", "")),
    )


def size_text(nbytes: int) -> str:
    """A size as people read it: '31.9 MB', '2.41 GB', '10.6 kB' (decimal units, as the run reports)."""
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.2f} GB"
    if nbytes >= 1e6:
        return f"{nbytes / 1e6:.1f} MB"
    return f"{nbytes / 1e3:.1f} kB"


@dataclass(frozen=True)
class DeletionSummary:
    """What a delete would remove, as the server counts it now. EVERYTHING: the selection is every
    study on the server (then the counts are the server's own totals, and FACTS is empty)."""

    server: str
    studies: tuple[str, ...]
    patients: int
    series: int
    instances: int
    bytes: int
    everything: bool
    facts: tuple[StudyFacts, ...] = ()

    def counts(self) -> str:
        """'2 patients, 3 studies, 6 series, 18 instances, 31.9 MB'."""
        return (
            f"{plural(self.patients, 'patient')}, {plural(len(self.studies), 'study')}, "
            f"{plural(self.series, 'series')}, {plural(self.instances, 'instance')}, {size_text(self.bytes)}"
        )


def _key(batch: list[str]) -> str:
    """An item's key from its studies: planning again (after an outage) gives the same keys, which the
    ledger ignores; a different batch never takes the key of another."""
    return "d/" + hashlib.sha1(" ".join(batch).encode()).hexdigest()[:20]


@register
class Delete(Operation):
    """The chosen studies, deleted in batches (bulk delete) or one by one; each item's result lists what
    it deleted (Orthanc ID, StudyInstanceUID, counts) and which of its studies were gone already."""

    name = "delete"
    unit = "items"
    Params = DeleteParams
    p: DeleteParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | DeleteParams) -> None:
        """Raises ParamsError for bad parameters (no selection, or --all with one), ConfigError for a
        server that is not configured."""
        super().__init__(settings, params)
        self.server = connect(settings, self.p.on, self.p.workers or settings.workers)
        #: the studies this run deletes, found once: what the summary counts is what the plan lists
        self._studies: list[str] | None = None
        #: each study as the summary counted it (none when it counted the whole server at once)
        self._facts: dict[str, StudyFacts] = {}

    def preflight(self) -> None:
        """Find the studies at the start of a new run (a resume plans from what is left, never looks
        again: a study deleted already must not stop the rest). Calling it again changes nothing.

        Raises PreflightError or Unauthorized (the server), ConfigError (a selector naming no study).
        """
        preflight_server(self.server)
        if self._studies is None and self.p.matched is None:
            chosen = first_look(self.server, self.p)
            self._studies = chosen if chosen is not None else self.chosen()
            self.remember("matched", len(self._studies))

    def chosen(self) -> list[str]:
        """The Orthanc IDs of the studies this run deletes, looked up on first use."""
        if self._studies is None:
            self._studies = resolve(self.server, Selection.of(self.p), require_match=False)
        return self._studies

    def summary(self) -> DeletionSummary:
        """Patients, studies, series, instances and bytes the run would delete, counted on the server
        (call after `preflight`). Raises what the server's answers raise."""
        studies = self.chosen()
        totals = self.server.statistics()
        # the chosen studies all came from the server: as many as it has means all of them
        everything = bool(studies) and (self.p.all or len(set(studies)) >= int(totals.get("CountStudies", 0)))
        if everything:
            return DeletionSummary(
                self.server.display,
                tuple(studies),
                patients=int(totals.get("CountPatients", 0)),
                series=int(totals.get("CountSeries", 0)),
                instances=int(totals.get("CountInstances", 0)),
                bytes=int(totals.get("TotalDiskSize", 0)),
                everything=True,
            )
        facts = [found for study in studies if (found := study_facts(self.server, study)) is not None]
        self._facts = {one.id: one for one in facts}
        return DeletionSummary(
            self.server.display,
            tuple(studies),
            patients=len({one.patient for one in facts}),
            series=sum(one.series for one in facts),
            instances=sum(one.instances for one in facts),
            bytes=sum(one.bytes for one in facts),
            everything=False,
            facts=tuple(facts),
        )

    def plan(self) -> Iterable[PlannedItem]:
        if self._studies is None and self.p.matched is not None:
            yield from self._plan_resumed()
            return
        size = BATCH_SIZE if self.server.capabilities().bulk_delete else 1
        studies = self.chosen()
        for n in range(0, len(studies), size):
            batch = studies[n : n + size]
            # what the summary counted goes with the item: a retry after a delete that took effect
            # but whose answer was lost still records what it deleted
            known = {study: self._facts[study].record() for study in batch if study in self._facts}
            yield PlannedItem(
                DELETION, _key(batch), {"ids": batch, "facts": known} if known else {"ids": batch}
            )

    def _plan_resumed(self) -> Iterable[PlannedItem]:
        """A run stopped while it listed its studies plans nothing more: the studies confirmed at its
        start are not looked up again (by then a query or --all would find studies no one confirmed)."""
        listed = sum(
            len(item.payload.get("ids", ())) for item in self.ledger.items(self.run_id or "", kind=DELETION)
        )
        if listed < (self.p.matched or 0):
            log.warning(
                "this run stopped while it listed its studies: only the %d it listed are deleted, not the "
                "other %d it was confirmed for; run `pacsflow delete` again for those",
                listed,
                (self.p.matched or 0) - listed,
            )
        return iter(())

    def do(self, item: Item) -> Outcome:
        """Delete the item's studies that are still there and check that they are gone.

        Raises BadInput (a study still on the server after its delete: the failure keeps the record of
        the others), or what the server's answers raise.
        """
        found: dict[str, StudyFacts] = {}
        gone: list[str] = []
        for study in item.payload["ids"]:
            facts = study_facts(self.server, study)
            if facts is None:
                gone.append(study)
            else:
                found[study] = facts
        if found:
            self._delete(list(found))
        kept = [study for study in found if self._present(study)]
        deleted = [facts for study, facts in found.items() if study not in kept]
        result: dict[str, Any] = {}
        if item.attempts > 1:
            # an earlier attempt's delete may have taken effect with its answer lost: what the summary
            # counted of those studies is recorded as deleted by this run
            counted = item.payload.get("facts") or {}
            earlier = [counted[study] for study in gone if study in counted]
            gone = [study for study in gone if study not in counted]
            if earlier:
                result["deleted_by_an_earlier_attempt"] = earlier
        if deleted:
            result["deleted"] = [facts.record() for facts in deleted]
        if gone:
            result["already_deleted"] = gone
        nbytes = sum(facts.bytes for facts in deleted)
        if kept:
            result["not_deleted"] = kept
            error = BadInput(
                f"{plural(len(kept), 'study')} still on {self.server.display} after the delete "
                "(new instances arriving?)",
                where=", ".join(kept),
            )
            error.result, error.nbytes = result, nbytes
            raise error
        note = None
        if gone:
            note = ALREADY_DELETED if not deleted else f"{len(gone)} {ALREADY_DELETED}"
        return Outcome(status=DONE, nbytes=nbytes, result=result, note=note)

    def _delete(self, studies: list[str]) -> None:
        if self.server.capabilities().bulk_delete:
            # it ignores IDs already gone, so a retry after a cut-off request is harmless
            self.server.post_json("/tools/bulk-delete", {"Resources": studies})
            return
        for study in studies:
            # gone meanwhile (or by our own retried request): the check after says which
            with suppress(NotFound):
                self.server.delete_resource("studies", study)

    def _present(self, study: str) -> bool:
        try:
            self.server.resource("studies", study)
        except NotFound:
            return False
        return True

    def finish(self, run: RunInfo) -> list[str]:
        deleted: list[dict[str, Any]] = []
        gone = failed = 0
        for item in self.ledger.items(run.id, kind=DELETION):
            result = item.result or {}
            deleted += result.get("deleted", []) + result.get("deleted_by_an_earlier_attempt", [])
            gone += len(result.get("already_deleted", []))
            if item.status == FAILED:
                failed += len(item.payload["ids"]) - len(result.get("deleted", []))
                failed -= len(result.get("deleted_by_an_earlier_attempt", []))
                failed -= len(result.get("already_deleted", []))
        instances = sum(one.get("instances", 0) for one in deleted)
        line = (
            f"deleted {plural(len(deleted), 'study')} ({plural(instances, 'instance')}, "
            f"{size_text(sum(one.get('bytes', 0) for one in deleted))}) from {self.server.display}"
        )
        if gone:
            line += f"; {gone} {ALREADY_DELETED}"
        if failed:
            line += f"; {plural(failed, 'study')} not deleted"
        return [line]

    def close(self) -> None:
        self.server.close()
