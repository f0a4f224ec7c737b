"""Deterministic synthetic DICOM studies (R12) and deliberately broken files, for tests and benchmarks."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

MODALITIES = ("CT", "MR", "CR", "DX")
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}
BODY_PARTS = {"CT": "CHEST", "MR": "HEAD", "CR": "CHEST", "DX": "CHEST"}
# Non-ASCII names on purpose: character sets are where real archives break.
NAMES = (
    ("Müller", "Jürgen"),
    ("Øster", "Åse"),
    ("Núñez", "José"),
    ("Dvořák", "Antonín"),
    ("Smith", "John"),
    ("山田", "太郎"),
    ("Ζωγράφου", "Ελένη"),
    ("O'Brien", "Siobhán"),
    ("Lefèvre", "Zoé"),
    ("Kowalski", "Łukasz"),
)


@dataclass(frozen=True)
class Shape:
    """How many of each level to generate, how big each image is, and the seed."""

    patients: int = 1
    studies: int = 1
    series: int = 1
    instances: int = 1
    pixels: int = 64
    seed: int = 0

    @property
    def total(self) -> int:
        return self.patients * self.studies * self.series * self.instances

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def instance_keys(shape: Shape) -> Iterator[tuple[int, int, int, int]]:
    """(patient, study, series, instance) indices in a stable order."""
    for p in range(shape.patients):
        for st in range(shape.studies):
            for se in range(shape.series):
                for i in range(shape.instances):
                    yield p, st, se, i


def _uid(shape: Shape, *parts: object) -> str:
    # one source joined with separators: pydicom joins its sources without any, so (1, 0, 10) and
    # (10, 1, 0) gave the same UID (10 of 2,000 instances of a generated archive shared one)
    return generate_uid(entropy_srcs=["/".join(["pacsflow-synthetic", str(shape.seed), *map(str, parts)])])


def patient_id(shape: Shape, p: int) -> str:
    return f"PF{shape.seed:03d}-{p:05d}"


def make_instance(shape: Shape, p: int, st: int, se: int, i: int) -> Dataset:
    """One realistic instance; the same indices and seed always give the same bytes."""
    patient_rng = random.Random(f"{shape.seed}/{p}")
    study_rng = random.Random(f"{shape.seed}/{p}/{st}")
    family, given = NAMES[(p + shape.seed) % len(NAMES)]
    modality = MODALITIES[(p + st) % len(MODALITIES)]
    birth_year = patient_rng.randint(1935, 2015)
    study_year = max(birth_year + 1, study_rng.randint(2012, 2025))
    study_date = f"{study_year}{study_rng.randint(1, 12):02d}{study_rng.randint(1, 28):02d}"
    study_time = f"{study_rng.randint(7, 19):02d}{study_rng.randint(0, 59):02d}00"

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = f"{family}^{given}"
    ds.PatientID = patient_id(shape, p)
    ds.PatientBirthDate = f"{birth_year}{patient_rng.randint(1, 12):02d}{patient_rng.randint(1, 28):02d}"
    ds.PatientSex = patient_rng.choice("MFO")
    ds.PatientAge = f"{min(999, study_year - birth_year):03d}Y"

    ds.StudyInstanceUID = _uid(shape, "study", p, st)
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.StudyID = str(st + 1)
    ds.AccessionNumber = f"A{shape.seed:02d}{p:05d}{st:03d}"
    ds.StudyDescription = f"{modality} {BODY_PARTS[modality].lower()} study {st + 1}"
    ds.ReferringPhysicianName = "Référent^Hélène"
    ds.InstitutionName = "pacsflow Synthetic Hospital"

    ds.SeriesInstanceUID = _uid(shape, "series", p, st, se)
    ds.SeriesNumber = se + 1
    ds.SeriesDate = study_date
    ds.SeriesTime = study_time
    ds.Modality = modality
    ds.SeriesDescription = f"series {se + 1}"
    ds.BodyPartExamined = BODY_PARTS[modality]

    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = _uid(shape, "instance", p, st, se, i)
    ds.InstanceNumber = i + 1
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality in ("CT", "MR") else "OTHER"]
    if modality in ("CT", "MR"):
        ds.FrameOfReferenceUID = _uid(shape, "frame", p, st, se)
        ds.SliceThickness = "2.5"
        ds.ImagePositionPatient = ["0", "0", f"{i * 2.5:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.7", "0.7"]
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
    _add_pixels(ds, shape, (p, st, se, i))

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "PACSFLOW_SYNTH"
    return ds


def _add_pixels(ds: Dataset, shape: Shape, key: tuple[int, int, int, int]) -> None:
    """A phantom: a disc over a gradient with seeded noise, 12 bits stored in 16."""
    size = shape.pixels
    rng = np.random.default_rng([shape.seed, *key])
    y, x = np.mgrid[0:size, 0:size]
    radius = size * (0.25 + 0.1 * ((key[3] % 10) / 10))
    disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < radius**2
    image = (x * (1500 // max(1, size))) + disc * 1800 + rng.integers(0, 200, (size, size))
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.clip(image, 0, 4095).astype("<u2").tobytes()


def encode(ds: Dataset) -> bytes:
    """A dataset as the bytes of a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def instance_bytes(shape: Shape, p: int, st: int, se: int, i: int) -> bytes:
    return encode(make_instance(shape, p, st, se, i))


def instance_path(root: Path, shape: Shape, p: int, st: int, se: int, i: int) -> Path:
    """Where `populate --out` puts an instance: patient/study/series/instance.dcm."""
    return root / patient_id(shape, p) / f"study{st + 1:03d}" / f"series{se + 1:03d}" / f"{i + 1:05d}.dcm"


def write_bad_files(folder: Path, shape: Shape | None = None) -> dict[str, Path]:
    """Deliberately broken files for tests: truncated header, truncated pixels, not DICOM, empty."""
    folder.mkdir(parents=True, exist_ok=True)
    good = instance_bytes(shape or Shape(seed=999), 0, 0, 0, 0)
    files = {
        "truncated_header": (folder / "truncated_header.dcm", good[:200]),
        "truncated_pixels": (folder / "truncated_pixels.dcm", good[: len(good) - len(good) // 3]),
        "not_dicom": (folder / "not_dicom.dcm", b"This is a text file with a .dcm name.\n" * 20),
        "empty": (folder / "empty.dcm", b""),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in files.items()}
