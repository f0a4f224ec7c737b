"""migrate: move a date range of studies from a DICOM node into an Orthanc, day by day (seed 002's
PacsMigrator), each study sent straight from the node to the Orthanc and its instance count checked."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from pacsflow.dimse import check_find
from pacsflow.errors import BadInput, ConfigError, PacsflowError, ServerError, Unreachable
from pacsflow.ledger import DONE, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.params import MigrateParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.ops.transfer import source_modality_name
from pacsflow.orthanc import orthanc_id
from pacsflow.pacing import take
from pacsflow.qr import Refused, Sessions, run_bucket
from pacsflow.wording import plural

log = logging.getLogger("pacsflow")

DAY, STUDY = "day", "study"
#: phases: find a day's studies, move each; a day's studies are scoped by the day, so they are moved
#: while the next days are still being found, one day after the other
_DAYS, _STUDIES = 0, 1
ALREADY = "already there"
STUDY_KEYS = ("StudyInstanceUID", "PatientID", "NumberOfStudyRelatedInstances", "ModalitiesInStudy")
#: how long Orthanc's own C-MOVE waits for each answer of the node (its "Timeout", in seconds)
MOVE_TIMEOUT = 60


def days(first: str, last: str, newest_first: bool) -> list[str]:
    """Every day from FIRST to LAST (YYYYMMDD), in the order asked."""
    start, end = (date(int(d[:4]), int(d[4:6]), int(d[6:])) for d in (first, last))
    found = [(start + timedelta(n)).strftime("%Y%m%d") for n in range((end - start).days + 1)]
    return found[::-1] if newest_first else found


@register
class Migrate(Operation):
    """One item per day finds its studies on the node; one item per study has the node send it to the
    Orthanc (the Orthanc's own C-MOVE, or ours naming the Orthanc as destination), then counts it there."""

    name = "migrate"
    unit = "items"
    Params = MigrateParams
    p: MigrateParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | MigrateParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a node or server not configured."""
        super().__init__(settings, params)
        self.modality = settings.modality(self.p.source)
        self.our_aet = self.p.aet or settings.aet
        self.bucket = run_bucket(self.modality, self.p.rate)
        self.server = connect(settings, self.p.to, self.p.workers or settings.workers)
        self.sessions = Sessions(self.modality, self.our_aet, method="move", bucket=self.bucket)

    def preflight(self) -> None:
        """Raises PreflightError/Unauthorized (the server), ConfigError (the node refuses our C-FIND, or
        the Orthanc does not know the node)."""
        preflight_server(self.server)
        check_find(self.modality, self.our_aet, bucket=self.bucket)
        if self.p.orthanc_aet is None:
            self.remember("orthanc_aet", str(self.server.system().get("DicomAet") or "ORTHANC"))
        if self.p.via == "orthanc" and self.p.orthanc_name is None:
            self.remember("orthanc_name", source_modality_name(self.server, self.modality))

    def plan(self) -> Iterable[PlannedItem]:
        for day in days(self.p.from_date, self.p.to_date, self.p.order == "newest-first"):
            yield PlannedItem(DAY, f"d/{day}", {"day": day}, phase=_DAYS, scope=f"d/{day}")

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (a study short on the Orthanc after its move), Unreachable (the node or the
        server is down), RemoteError/ServerError (a refused move)."""
        if item.kind == DAY:
            return self._day(item)
        return self._study(item.payload)

    def _day(self, item: Item) -> Outcome:
        keys = {name: "" for name in STUDY_KEYS}
        keys["StudyDate"] = item.payload["day"]
        found = self.sessions.get().find("STUDY", keys)
        children = [
            PlannedItem(
                STUDY,
                f"s/{study['StudyInstanceUID']}",
                {
                    "study": study["StudyInstanceUID"],
                    "patient": study["PatientID"],
                    "expected": _number(study["NumberOfStudyRelatedInstances"]),
                },
                phase=_STUDIES,
                scope=item.scope,
            )
            for study in found
            if study["StudyInstanceUID"]
        ]
        return Outcome(result={"studies": len(children)}, children=children)

    def _study(self, payload: Mapping[str, Any]) -> Outcome:
        study, patient = payload["study"], payload["patient"]
        expected = payload.get("expected")
        if expected is None:  # the node did not say: its list of the study's instances is the measure
            keys = {"StudyInstanceUID": study, "SOPInstanceUID": ""}
            expected = len(self.sessions.get().find("IMAGE", keys))
        present = self._present(patient, study)
        if present >= expected:
            return Outcome(status=SKIPPED, note=ALREADY, result={"expected": expected, "present": present})
        self._move(study)
        present = self._present(patient, study)
        if present < expected:
            short = BadInput(
                f"incomplete: {present} of {expected} instances in {self.server.display}", where=study
            )
            short.result = {"expected": expected, "present": present}
            raise short
        return Outcome(result={"expected": expected, "present": present})

    def _present(self, patient: str, study: str) -> int:
        """The study's instances on the Orthanc: under the C-FIND's PatientID, else under whatever
        PatientID its files carry (a merged patient), found by its StudyInstanceUID."""
        found = self.server.instance_ids_of("studies", orthanc_id(patient, study))
        if found:
            return len(found)
        # the body is the UID itself, not JSON
        matches = self.server.request("POST", "/tools/lookup", content=study.encode()).json()
        studies = [one["ID"] for one in matches or () if one.get("Type") == "Study"]
        return sum(len(self.server.instance_ids_of("studies", one)) for one in studies)

    def _move(self, study: str) -> None:
        target = self.p.orthanc_aet or "ORTHANC"
        if self.p.via == "dicom":
            try:
                self.sessions.get().retrieve({"StudyInstanceUID": study}, "STUDY", destination=target)
            except Refused as exc:
                raise self._refused(exc, target) from None
            return
        # the Orthanc opens its own association and sends one C-MOVE: two requests to the node
        take(self.bucket, 2)
        body = {
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": study}],
            "TargetAet": target,
            "Timeout": MOVE_TIMEOUT,
        }
        try:
            self.server.run_job(f"/modalities/{self.p.orthanc_name}/move", body)
        except ServerError as exc:
            raise self._down_or(exc) from None

    def _down_or(self, exc: ServerError) -> PacsflowError:
        """A move the Orthanc reports failed: the node down (an outage: the run waits), else the failure."""
        try:
            self.sessions.get().probe()
        except Unreachable as down:
            return down
        return ServerError(f"the move failed: {exc.reason}", transient=True)

    def _refused(self, exc: Refused, target: str) -> PacsflowError:
        if exc.retrieved.completed or exc.retrieved.failed:
            return exc
        return ConfigError(
            f"{exc.reason}, before sending anything: the node may not know {target!r} (the Orthanc's AE "
            "title) as a move destination; add it with the Orthanc's address and DICOM port to its modalities"
        )

    def finish(self, run: RunInfo) -> list[str]:
        studies = self.ledger.items(run.id, kind=STUDY)
        moved = sum(1 for one in studies if one.status == DONE)
        already = sum(1 for one in studies if one.status == SKIPPED)
        failed = len(studies) - moved - already
        day_items = self.ledger.items(run.id, kind=DAY)
        lines = [
            f"{plural(len(day_items), 'day')}: {plural(moved, 'study', 'studies')} moved into "
            f"{self.server.display}, {already} already there"
        ]
        if failed:
            shown = f"`pacsflow run show {run.id} --failed`"
            lines.append(f"{plural(failed, 'study', 'studies')} incomplete or not moved: {shown}")
        return lines

    def close(self) -> None:
        self.sessions.close()
        self.server.close()


def _number(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None
