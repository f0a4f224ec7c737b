"""De-identified copies of studies: `anonymize --on SERVER` (seed 000's "anonymized copy of every study",
on the server itself) and `transfer --anonymize` (onto another server), with the same pseudonyms and UIDs
as local runs; each copy verified, and only then, if asked, the verified originals deleted."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select

from pacsflow.anonymize.verify import Verifier
from pacsflow.errors import BadInput, NotFound, ServerError
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ledger.schema import pseudonyms
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.deidentifying import Deidentifying, copy_names, deidentify_checked, settle
from pacsflow.ops.params import AnonymizeCopyParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.ops.transfer import DELETE_BATCH
from pacsflow.selection import Selection, first_look, resolve
from pacsflow.stored import check_stored
from pacsflow.wording import plural

log = logging.getLogger("pacsflow")
STUDY, INSTANCE, VERIFY = "study", "instance", "verify"
COPY_THERE = "copy already there"
A_COPY = "a de-identified copy already"
ALREADY_OURS = "already de-identified"


@register
class AnonymizeCopy(Operation):
    """Per study: list it (phase 0), copy each instance de-identified (phase 1), then check the copy
    with the verifier and delete the verified originals (phase 2)."""

    name = "anonymize-copy"
    unit = "items"
    Params = AnonymizeCopyParams
    p: AnonymizeCopyParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | AnonymizeCopyParams) -> None:
        """Raises ParamsError, ConfigError (unknown server, no secret or not the run's secret)."""
        super().__init__(settings, params)
        workers = self.p.workers or settings.workers
        self.server = connect(settings, self.p.source, workers)
        #: where the copies go: the same server, or another (transfer --anonymize)
        self.destination = connect(settings, self.p.to, workers) if self.p.to else self.server
        self._deid = Deidentifying(self, settle(self))
        self._chosen: list[str] | None = None

    @property
    def target(self) -> str:
        return f"server:{self.p.to or self.p.source}"

    def preflight(self) -> None:
        """Raises PreflightError, Unauthorized (a server), ConfigError (a selector matches no study, the
        destination is the source under another name)."""
        preflight_server(self.server)
        if self.destination is not self.server:
            from pacsflow.ops.transfer import accepted_destination

            preflight_server(self.destination)
            accepted_destination(self.server, self.destination)
        self._chosen = first_look(self.server, self.p)
        if self._chosen is not None:
            self.remember("matched", len(self._chosen))

    def plan(self) -> Iterable[PlannedItem]:
        studies = self._chosen
        if studies is None:
            studies = resolve(self.server, Selection.of(self.p), require_match=False)
            if not studies and self.p.query:
                log.warning("the query matches no study on %s", self.server.display)
        for study in studies:
            yield PlannedItem(STUDY, f"s/{study}", {"study": study})

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (a study or instance gone, refused or not de-identifiable, a copy that fails
        verification), or what the server's answers raise."""
        if item.kind == STUDY:
            return self._list(item.payload["study"])
        if item.kind == INSTANCE:
            return self._copy(item.payload)
        return self._verify(item)

    # -- phase 0: what the study holds, and what its copy will be called ------------------------

    def _list(self, study: str) -> Outcome:
        try:
            info = self.server.resource("studies", study)
        except NotFound:
            raise BadInput(f"study is not on {self.server.display}", where=study) from None
        patient_tags = info.get("PatientMainDicomTags", {})
        patient_id = str(patient_tags.get("PatientID", "")).strip()
        if self._is_pseudonym(patient_id):
            return Outcome(status=SKIPPED, note=A_COPY)
        names = copy_names(self.server, study, info, self._deid.get())
        children = [
            PlannedItem(
                INSTANCE,
                f"i/{study}/{name.instance}",
                {"id": name.instance, "study": study, "after": name.orthanc_id},
                phase=1,
            )
            for name in names
        ]
        copy = names[0].study_id if names else ""
        children.append(PlannedItem(VERIFY, f"v/{study}", {"study": study, "copy": copy}, phase=2))
        return Outcome(result={"instances": len(children) - 1, "copy": copy}, children=children)

    def _is_pseudonym(self, patient_id: str) -> bool:
        """A study of a patient the mapping knows as a pseudonym is a copy we made: never copied again."""
        with self.ledger.engine.connect() as conn:
            found = conn.execute(select(pseudonyms.c.id).where(pseudonyms.c.pseudonym == patient_id)).first()
        return found is not None

    # -- phase 1: each instance -----------------------------------------------------------------

    def _copy(self, payload: dict[str, Any]) -> Outcome:
        original, after = payload["id"], payload["after"]
        if self._holds(after):  # a rerun, or a copy another run made: nothing is sent twice
            return Outcome(status=SKIPPED, note=COPY_THERE, result={"after": after})
        try:
            data = self.server.instance_file(original)
        except NotFound:
            raise BadInput(f"instance is no longer on {self.server.display}", where=original) from None
        result = deidentify_checked(self._deid.get(), data, where=original)
        if result.record.already:
            return Outcome(status=SKIPPED, note=ALREADY_OURS, result={"after": original})
        try:
            answer = self.destination.upload(result.data)
        except ServerError as exc:
            if exc.status == 400:
                raise BadInput(
                    f"the server refused the de-identified copy ({exc.reason})", where=original
                ) from None
            raise
        check_stored(answer, where=original, expected_id=after)
        record = {**result.anon(), "orthanc_after": answer["ID"]}
        return Outcome(nbytes=len(result.data), result={"after": answer["ID"], "anon": record})

    def _holds(self, instance: str) -> bool:
        try:
            self.destination.request("GET", f"/instances/{instance}/attachments/dicom/size")
        except NotFound:
            return False
        return True

    # -- phase 2: the study's copy verified, then its originals deleted -------------------------

    def _verify(self, item: Item) -> Outcome:
        study, copy = item.payload["study"], item.payload["copy"]
        instances = self.ledger.items(item.run_id, kind=INSTANCE, key_prefix=f"i/{study}/")
        copied = [one for one in instances if one.status in (DONE, SKIPPED)]
        failed = sum(1 for one in instances if one.status == FAILED)
        records = [one.result["anon"] for one in copied if one.result and "anon" in one.result]
        from pacsflow.anonymize.mapping import record_instances

        record_instances(self.ledger, records, self.target, item.run_id)
        wanted = {one.payload["after"]: one.payload["id"] for one in copied if one.last_error != ALREADY_OURS}
        held = set(self._copy_instances(copy))
        missing = set(wanted) - held
        if missing:
            raise BadInput(
                f"the de-identified copy lacks {len(missing)} of {plural(len(wanted), 'instance')}; "
                "nothing deleted",
                where=study,
            )
        verifier = Verifier(self.ledger)
        # references are checked when the run ends (a prior in another study may be copied later)
        copies = ((after, self.destination.instance_file(after)) for after in sorted(wanted))
        report = verifier.report(copies, references=False)
        if report.files != len(wanted):  # a copy that cannot be read is no verified copy
            unread = len(wanted) - report.files
            raise BadInput(
                f"{unread} of {plural(len(wanted), 'copy')} cannot be read back as DICOM; nothing deleted",
                where=study,
            )
        if not report.ok:
            raise BadInput(
                f"the de-identified copy fails verification ({plural(len(report.findings), 'problem')}: "
                f"{report.findings[0].problem}); nothing deleted",
                where=study,
            )
        deleted = 0
        if self.p.delete_original:
            # only originals whose copy was just verified, and never a copy itself (an ID kept as is)
            originals = sorted(original for after, original in wanted.items() if original != after)
            for n in range(0, len(originals), DELETE_BATCH):
                self.server.post_json("/tools/bulk-delete", {"Resources": originals[n : n + DELETE_BATCH]})
            deleted = len(originals)
        note = None if not failed else f"{failed} instances not copied (see their failures)"
        return Outcome(result={"verified": len(wanted), "deleted": deleted, "copy": copy}, note=note)

    def _copy_instances(self, copy: str) -> list[str]:
        try:
            return self.destination.instance_ids_of("studies", copy)
        except NotFound:
            return []

    def finish(self, run: RunInfo) -> list[str]:
        verified = [one for one in self.ledger.items(run.id, kind=VERIFY) if one.status == DONE]
        copies = sum((one.result or {}).get("verified", 0) for one in verified)
        deleted = sum((one.result or {}).get("deleted", 0) for one in verified)
        tally = self.ledger.tally(run.id)
        there = sum(n for (kind, _, note), n in tally.items() if kind == INSTANCE and note == COPY_THERE)
        skipped_copies = sum(n for (kind, _, note), n in tally.items() if kind == STUDY and note == A_COPY)
        lines = [
            f"{plural(len(verified), 'study')} copied de-identified and verified ({copies} instances, "
            f"{there} of them there before); {deleted} originals deleted"
        ]
        if skipped_copies:
            lines.append(f"{plural(skipped_copies, 'study')} left alone: already de-identified copies")
        return lines

    def close(self) -> None:
        self.server.close()
        if self.destination is not self.server:
            self.destination.close()
