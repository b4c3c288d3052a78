"""Synthetic DICOM for tests and demos: CT series of any orientation, and dcmqi-style SEGs built by hand.

Arrays follow `imaging.series`: `array[i=column, j=row, k=slice]`; slice `k` lies at
`origin + k * spacing[2] * (row_cos x col_cos)` (LPS), pixel `(i, j)` of a slice at
`+ i * spacing[0] * row_cos + j * spacing[1] * col_cos`.
"""

from __future__ import annotations

import datetime
import io
import random
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from medcloud.imaging.series import shallow_copy, sort_instances

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
AXIAL: tuple[tuple[float, float, float], tuple[float, float, float]] = ((1, 0, 0), (0, 1, 0))
SAGITTAL: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0, 1, 0), (0, 0, -1))
# Oblique with exactly representable cosines (a 3-4-5 rotation about the z axis, then tilted).
OBLIQUE: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.6, 0.8, 0), (0, 0, -1))


def _ds(values: Sequence[float]) -> list[str]:
    """Decimal strings of at most 16 characters (the DS limit)."""
    return [format_number_as_ds(float(v)) for v in values]


def _stored_values(hu: np.ndarray, intercept: float, slope: float) -> tuple[np.ndarray, int]:
    """Stored pixel values (uint16 when none is negative, else int16) and the PixelRepresentation."""
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    if stored.min() >= 0 and stored.max() <= 65535:
        return stored.astype("<u2"), 0
    if stored.min() >= -32768 and stored.max() <= 32767:
        return stored.astype("<i2"), 1
    raise ValueError("The HU values do not fit 16-bit stored values with this slope and intercept.")


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _common(patient_id: str, study_uid: str, study_date: str | None, study_time: str | None) -> Dataset:
    """Patient, study and equipment attributes every synthetic instance carries."""
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Patient", patient_id, "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = study_uid, "1", "", ""
    if study_date is not None:
        ds.StudyDate = study_date
    if study_time is not None:
        ds.StudyTime = study_time
    ds.Manufacturer, ds.ManufacturerModelName = "medcloud", "synthetic"
    return ds


def write_ct_series(
    array_xyz_hu: np.ndarray,
    *,
    orientation: Sequence[Sequence[float]] = AXIAL,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    shuffle: bool = False,
    rescale_intercept: float = -1024,
    rescale_slope: float = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-001",
    modality: str = "CT",
    study_date: str | None = "20240102",
    study_time: str | None = "123456",
    seed: int = 0,
) -> list[pydicom.Dataset]:
    """One single-frame instance per slice `k` of `array_xyz_hu` (HU, `[column, row, slice]`).

    `orientation` = (row cosines, column cosines) in LPS; `spacing` = (column step, row step, slice step;
    a negative slice step stacks slices against the normal); `origin` = LPS position of voxel (0, 0, 0).
    `shuffle` returns the instances in random order with InstanceNumbers permuted as well, so neither
    tells the slice order. `study_date`/`study_time` None leaves the tag out.
    """
    row, col = (np.asarray(v, dtype=np.float64) for v in orientation)
    stored, representation = _stored_values(array_xyz_hu, rescale_intercept, rescale_slope)
    template = _common(patient_id, study_uid or generate_uid(), study_date, study_time)
    template.Modality, template.SeriesInstanceUID, template.SeriesNumber = modality, series_uid or generate_uid(), 1
    template.SeriesDescription, template.SOPClassUID = "Synthetic CT", CTImageStorage
    template.FrameOfReferenceUID, template.PositionReferenceIndicator = generate_uid(), ""
    template.ImageType, template.AcquisitionNumber, template.KVP = ["ORIGINAL", "PRIMARY", "AXIAL"], 1, "120"
    template.ImageOrientationPatient = _ds([*row, *col])
    template.PixelSpacing = _ds([spacing[1], spacing[0]])
    template.SliceThickness = format_number_as_ds(abs(float(spacing[2])))
    template.SamplesPerPixel, template.PhotometricInterpretation = 1, "MONOCHROME2"
    template.Rows, template.Columns = stored.shape[1], stored.shape[0]
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 16, 15
    template.PixelRepresentation, template.RescaleType = representation, "HU"
    template.RescaleIntercept = format_number_as_ds(float(rescale_intercept))
    template.RescaleSlope = format_number_as_ds(float(rescale_slope))
    numbers = list(range(1, stored.shape[2] + 1))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(numbers)
    step = np.cross(row, col) * float(spacing[2])
    out = [
        _ct_slice(template, stored[:, :, k], np.asarray(origin, dtype=np.float64) + k * step, numbers[k])
        for k in range(stored.shape[2])
    ]
    if shuffle:
        rng.shuffle(out)
    return out


def _ct_slice(template: Dataset, stored: np.ndarray, position: np.ndarray, number: int) -> Dataset:
    """One instance: the template's attributes plus its own UID, position, number and pixels `[col, row]`."""
    ds = shallow_copy(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    ds.preamble = b"\0" * 128
    ds.InstanceNumber = number
    ds.ImagePositionPatient = _ds(position)
    ds.PixelData = np.ascontiguousarray(stored.T).tobytes()
    return ds


def series_bytes(datasets: Sequence[pydicom.Dataset]) -> list[bytes]:
    """Each dataset as the bytes of a DICOM Part-10 file (with the 128-byte preamble)."""
    out = []
    for ds in datasets:
        if getattr(ds, "preamble", None) is None:
            ds.preamble = b"\0" * 128
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _segment_item(number: int, name: str) -> Dataset:
    item = Dataset()
    item.SegmentNumber, item.SegmentLabel, item.SegmentAlgorithmType = number, name, "MANUAL"
    item.SegmentedPropertyCategoryCodeSequence = [_code_item("91723000", "SCT", "Anatomical Structure")]
    item.SegmentedPropertyTypeCodeSequence = [_code_item("91772007", "SCT", "Organ")]
    return item


def _frame_item(source: Dataset, segment: int, k: int, reference: str) -> Dataset:
    """One per-frame functional group item, dcmqi style."""
    item = Dataset()
    content = Dataset()
    content.DimensionIndexValues = [segment, k + 1]
    item.FrameContentSequence = [content]
    if reference in ("both", "uid"):
        src = Dataset()
        src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        src.PurposeOfReferenceCodeSequence = [
            _code_item("121322", "DCM", "Source image for image processing operation")
        ]
        derivation = Dataset()
        derivation.SourceImageSequence = [src]
        derivation.DerivationCodeSequence = [_code_item("113076", "DCM", "Segmentation")]
        item.DerivationImageSequence = [derivation]
    if reference in ("both", "position"):
        position = Dataset()
        position.ImagePositionPatient = source.ImagePositionPatient
        item.PlanePositionSequence = [position]
    ident = Dataset()
    ident.ReferencedSegmentNumber = segment
    item.SegmentIdentificationSequence = [ident]
    return item


def _seg_header(first: Dataset, sources: Sequence[Dataset]) -> Dataset:
    ds = _common(first.PatientID, first.StudyInstanceUID, first.get("StudyDate"), first.get("StudyTime"))
    ds.SOPClassUID, ds.SOPInstanceUID = SEGMENTATION_STORAGE, generate_uid()
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    ds.preamble = b"\0" * 128
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SEG", generate_uid(), 300, 1
    ds.SeriesDescription = "Handmade SEG"
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
    ds.ContentTime, ds.ContentLabel, ds.ImageType = "000000", "SEGMENTATION", ["DERIVED", "PRIMARY"]
    refs = [Dataset() for _ in sources]
    for ref, src in zip(refs, sources, strict=True):
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedInstanceSequence = first.SeriesInstanceUID, refs
    ds.ReferencedSeriesSequence = [series]
    shared, plane, measures = Dataset(), Dataset(), Dataset()
    plane.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.get("SliceThickness", "1")
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [plane], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = first.Rows, first.Columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.SegmentationType, ds.LossyImageCompression = "BINARY", "00"
    return ds


def handmade_seg(
    label_volume: np.ndarray,
    source_datasets: Sequence[pydicom.Dataset],
    segments: Mapping[int, str],
    *,
    reference: Literal["both", "uid", "position"] = "both",
    shuffle_frames: bool = True,
    seed: int = 0,
) -> pydicom.Dataset:
    """A BINARY SEG written the way dcmqi does, with pydicom only (no highdicom).

    `segments` maps a label value of `label_volume` (`[column, row, slice]` on the series grid) to the
    SegmentLabel written; segment numbers follow the mapping's order. Only non-empty frames are kept,
    frames are shuffled unless told not to, and each frame names its source slice by SOPInstanceUID
    (`reference="uid"`), by ImagePositionPatient (`"position"`) or both.
    """
    sources = sort_instances(source_datasets)
    ds = _seg_header(sources[0], sources)
    ds.SegmentSequence = DicomSequence(_segment_item(n, name) for n, name in enumerate(segments.values(), 1))
    frames: list[tuple[np.ndarray, Dataset]] = []
    for number, value in enumerate(segments, 1):
        for k, source in enumerate(sources):
            mask = np.ascontiguousarray((label_volume[:, :, k] == value).T).astype(np.uint8)
            if mask.any():
                frames.append((mask, _frame_item(source, number, k, reference)))
    if shuffle_frames:
        random.Random(seed).shuffle(frames)
    ds.NumberOfFrames = len(frames)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(item for _, item in frames)
    packed = pack_bits(np.stack([mask for mask, _ in frames]).ravel()) if frames else b""
    ds.PixelData = packed + (b"\0" if len(packed) % 2 else b"")
    return ds
