"""The raw ceiling for retrieves: N threads C-GET series with pynetdicom, each instance written, no checks.

Usage: python bench/reference_retrieve.py HOST PORT CALLED_AET SERIES_FILE FOLDER WORKERS
SERIES_FILE has one "StudyInstanceUID SeriesInstanceUID" per line. Each thread opens one association (Study
Root C-GET, the common storage classes in the SCP role), takes series from a shared queue until none is
left, and writes the bytes of every C-STORE it receives, as they came, to
FOLDER/<SeriesInstanceUID>/<SOPInstanceUID>.dcm (a folder per series: the generated data sets repeat some
SOPInstanceUIDs in other series, which one flat folder would overwrite).
"""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get


def main() -> None:
    host, port, called = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    lines = Path(sys.argv[4]).read_text().split("\n")
    folder, workers = Path(sys.argv[5]), int(sys.argv[6])
    folder.mkdir(parents=True, exist_ok=True)
    todo: queue.Queue[tuple[str, str]] = queue.Queue()
    for line in lines:
        if line.strip():
            study, series = line.split()
            todo.put((study, series))

    failures: list[str] = []

    def work() -> None:
        current = [folder]  # the folder of the series this thread's association is getting

        def store(event: Any) -> int:
            (current[0] / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
            return 0x0000

        ae = AE(ae_title="REFERENCE")
        ae.add_requested_context(Get)
        # 120 storage classes with their SCP role: C-GET sends the instances back on this association
        roles = []
        for context in StoragePresentationContexts:
            ae.add_requested_context(context.abstract_syntax)
            roles.append(build_role(context.abstract_syntax, scp_role=True))
        assoc = ae.associate(
            host, port, ae_title=called, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)]
        )
        if not assoc.is_established:
            failures.append("association refused or aborted")
            return
        try:
            while True:
                try:
                    study, series = todo.get_nowait()
                except queue.Empty:
                    return
                current[0] = folder / series
                current[0].mkdir()
                query = Dataset()
                query.QueryRetrieveLevel = "SERIES"
                query.StudyInstanceUID, query.SeriesInstanceUID = study, series
                for _status, _identifier in assoc.send_c_get(query, Get):
                    pass  # the bench counts the files afterwards: no status checks here
        finally:
            assoc.release()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"reference: {', '.join(failures)}")


if __name__ == "__main__":
    main()
