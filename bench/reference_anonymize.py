"""The raw ceiling for de-identification: pydicom blanks the patient and renews the UIDs, no checks at all.

Usage: python bench/reference_anonymize.py FOLDER OUT PROCESSES
Each file is read, PatientName/PatientID blanked, Study/Series/SOP Instance UIDs replaced by
pydicom.uid.generate_uid() and the result written to OUT/<n>.dcm; PROCESSES > 1 is a multiprocessing Pool.
"""

from __future__ import annotations

import sys
from multiprocessing import Pool
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def anonymize(job: tuple[Path, Path]) -> None:
    source, target = job
    dataset = pydicom.dcmread(source)
    dataset.PatientName = ""
    dataset.PatientID = ""
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(target)


def main() -> None:
    folder, out, processes = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(path, out / f"{n:06d}.dcm") for n, path in enumerate(sorted(folder.rglob("*.dcm")))]
    if processes == 1:
        for job in jobs:
            anonymize(job)
    else:
        with Pool(processes) as pool:
            pool.map(anonymize, jobs, chunksize=8)


if __name__ == "__main__":
    main()
