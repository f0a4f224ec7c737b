"""A small pynetdicom Q/R peer for the tests: the habits of real PACS that Orthanc and dcmqrscp do not
show (no instance counts, no IMAGE-level queries, PatientIDs matched without case, a merged patient whose
C-FIND answers name another PatientID than its files)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move
from pynetdicom.sop_class import Verification

from pacsflow.config import ModalityConfig
from pacsflow.sandbox import free_port

STUDY_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate")
SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")


@dataclass
class QRPeer:
    """Serves DATA over C-FIND (Study Root: STUDY, SERIES, IMAGE), C-GET and C-MOVE (to DESTINATIONS)."""

    data: list[Dataset]
    #: NumberOfSeriesRelatedInstances in SERIES answers
    counts: bool = True
    #: IMAGE-level C-FIND answered (else: success with no match, as many PACS do)
    image_level: bool = True
    #: PatientID matched without case, as a database collation may
    ignore_case: bool = False
    #: the PatientID its C-FIND answers give (a merged patient), whatever the files say
    answered_id: str | None = None
    #: C-MOVE destinations: AE title -> (host, port)
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    _server: object = None

    def __enter__(self) -> QRPeer:
        ae = AE("QRPEER")
        for context in (Verification, Find, Get, Move):
            ae.add_supported_context(context)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, scu_role=False, scp_role=True)
        ae.requested_contexts = StoragePresentationContexts  # its C-MOVE's own association, to send
        handlers = [(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get), (evt.EVT_C_MOVE, self._move)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]

    @property
    def modality(self) -> ModalityConfig:
        return ModalityConfig(aet="QRPEER", host="127.0.0.1", port=self.port, name="pacs")

    def _patient_id(self, ds: Dataset) -> str:
        return self.answered_id or str(ds.PatientID)

    def _matches(self, query: Dataset, ds: Dataset) -> bool:
        wanted = str(query.get("PatientID", "") or "")
        if wanted and wanted != "*":
            have = self._patient_id(ds)
            if (have.casefold() != wanted.casefold()) if self.ignore_case else have != wanted:
                return False
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "StudyDate"):
            value = str(query.get(keyword, "") or "")
            if value and value != str(ds.get(keyword)):
                return False
        return True

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        level = query.QueryRetrieveLevel
        if level == "IMAGE" and not self.image_level:
            return
        seen: set[str] = set()
        for ds in self.data:
            if not self._matches(query, ds):
                continue
            key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}.get(level, "SOPInstanceUID")
            if str(ds.get(key)) in seen:
                continue
            seen.add(str(ds.get(key)))
            answer = Dataset()
            answer.SpecificCharacterSet = "ISO_IR 192"  # the names are not all ASCII
            answer.QueryRetrieveLevel = level
            for keyword in {"STUDY": STUDY_KEYS, "SERIES": SERIES_KEYS}.get(level, ("SOPInstanceUID",)):
                setattr(answer, keyword, ds.get(keyword, ""))
            if level == "STUDY":
                answer.PatientID = self._patient_id(ds)
                answer.ModalitiesInStudy = ds.Modality
            if level == "SERIES" and self.counts:
                answer.NumberOfSeriesRelatedInstances = sum(
                    1 for one in self.data if one.SeriesInstanceUID == ds.SeriesInstanceUID
                )
            yield 0xFF00, answer

    def _get(self, event: evt.Event) -> Iterator[int | tuple[int, Dataset]]:
        query = event.identifier
        wanted = set(str(query.get("SOPInstanceUID", "") or "").split("\\")) - {""}
        match = [ds for ds in self.data if self._matches(query, ds)]
        match = [ds for ds in match if not wanted or str(ds.SOPInstanceUID) in wanted]
        yield len(match)
        for ds in match:
            yield 0xFF00, ds

    def _move(self, event: evt.Event) -> Iterator[object]:
        wanted = event.move_destination
        wanted = wanted.decode() if isinstance(wanted, bytes) else str(wanted)
        yield self.destinations.get(wanted.strip(), (None, None))
        query = event.identifier
        match = [ds for ds in self.data if self._matches(query, ds)]
        yield len(match)
        for ds in match:
            yield 0xFF00, ds
