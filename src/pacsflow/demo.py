"""`pacsflow demo`: two throwaway Orthancs, synthetic data, upload, transfer, download, DICOM retrieval,
summary."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from pacsflow.config import ModalityConfig, Settings
from pacsflow.engine import Engine, RunResult
from pacsflow.ledger import Ledger
from pacsflow.ops.base import Operation
from pacsflow.ops.download import Download
from pacsflow.ops.populate import Populate
from pacsflow.ops.retrieve import Retrieve
from pacsflow.ops.transfer import Transfer
from pacsflow.ops.upload import Upload
from pacsflow.progress import make_progress
from pacsflow.sandbox import LocalOrthanc
from pacsflow.wording import plural

SHAPE = {"patients": 4, "studies": 2, "series": 2, "instances": 10, "pixels": 256, "seed": 2026}


def _sop_uids(folder: Path) -> set[str]:
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in folder.rglob("*.dcm")}


def run_demo(
    root: Path, *, keep: bool = False, quiet: bool = False, echo: Callable[[str], None] = print
) -> int:
    """Run the whole demo under ROOT; returns the exit status."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    source = LocalOrthanc("demo-a", root / "orthanc-a", user="demo", password=secrets.token_urlsafe(12))
    target = LocalOrthanc("demo-b", root / "orthanc-b", user="demo", password=secrets.token_urlsafe(12))
    started = time.monotonic()
    try:
        source.start()
        target.start()
        settings = Settings(
            ledger=f"sqlite:///{root / 'ledger.db'}",
            workers=4,
            servers={"a": source.server_config(), "b": target.server_config()},
            # b's DICOM port, as a PACS would be reached: C-FIND and C-GET (no inbound port needed)
            modalities={"b-dicom": ModalityConfig(aet=target.aet, host="127.0.0.1", port=target.dicom_port)},
        )
        ledger = Ledger(settings.ledger)
        echo(f"Orthanc a on {source.url}, Orthanc b on {target.url} (data in {root})")

        def step(op: Operation) -> RunResult:
            result = Engine(ledger, settings, progress=make_progress(quiet)).start(op)
            moved = f", {result.bytes / 1e6:.1f} MB" if result.bytes else ""
            echo(
                f"{op.name:<9} {result.status:<6} {result.counts.get('done', 0):>4} done, "
                f"{result.counts.get('skipped', 0)} skipped, {result.counts.get('failed', 0)} failed"
                f"{moved} in {result.elapsed:.1f}s   (run {result.run_id})"
            )
            for line in result.lines:
                echo(f"          {line}")
            return result

        data, downloaded, retrieved = root / "data", root / "download", root / "retrieved"
        results = [
            step(Populate(settings, {"out": str(data), "shape": SHAPE})),
            step(Upload(settings, {"paths": [str(data)], "to": "a"})),
            step(Transfer(settings, {"from": "a", "to": "b"})),
            step(Download(settings, {"from": "b", "out": str(downloaded)})),
            step(Retrieve(settings, {"from": "b-dicom", "to": str(retrieved), "method": "get"})),
        ]
        generated = _sop_uids(data)
        same = len(generated) > 0
        for way, folder in (("REST", downloaded), ("DICOM", retrieved)):
            fetched = _sop_uids(folder)
            same = same and fetched == generated
            echo(
                f"checked: {len(fetched)} of {plural(len(generated), 'generated instance')} came back "
                f"through a and b by {way}" + (" - identical" if fetched == generated else " - MISMATCH")
            )
        echo(
            f"demo finished in {time.monotonic() - started:.1f}s; "
            f"see the runs with: pacsflow --ledger sqlite:///{(root / 'ledger.db').resolve()} runs"
        )
        ok = same and all(result.exit_code == 0 for result in results)
        return 0 if ok else 1
    finally:
        for server in (source, target):
            if keep:
                server.stop()
            else:  # throwaway data: skip Orthanc's 3-second graceful stop
                server.wipe(graceful=False)
