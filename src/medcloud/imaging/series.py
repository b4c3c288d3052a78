"""Read a single-frame DICOM series (CT, MR, ...) into a HU volume with a RAS affine, and write NIfTI.

Conventions, shared with `imaging.seg` and `imaging.synthetic_dicom`:

- `array[i, j, k]`: `i` = column index in a slice (along ImageOrientationPatient's row cosine), `j` = row
  index (along the column cosine), `k` = slice index. Slices are sorted by ascending position along the
  slice normal `row cosine x column cosine`, never by file order or InstanceNumber.
- `affine` maps `(i, j, k, 1)` to RAS millimetres (the NIfTI convention): the DICOM LPS affine with its
  first two rows negated. Its columns are `row_cos * PixelSpacing[1]`, `col_cos * PixelSpacing[0]`, the
  slice step (from the first to the last ImagePositionPatient over `n - 1`, not SliceThickness) and the
  first slice's ImagePositionPatient.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ORIENTATION_TOLERANCE = 1e-3  # cosines of instances in one volume must agree this closely
_SPACING_TOLERANCE = 0.01  # relative deviation of a slice gap from the mean gap that is still "uniform"

DicomInput = Dataset | str | Path | bytes


@dataclass
class SeriesVolume:
    """A series as a volume: HU voxels `array[i=column, j=row, k=slice]`, its RAS affine and slice UIDs."""

    array: np.ndarray  # float32
    affine: np.ndarray  # 4x4, voxel index -> RAS mm
    instance_uids: list[str]  # SOPInstanceUID of slice k
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # LPS ImagePositionPatient per k

    @property
    def lps_affine(self) -> np.ndarray:
        """The same affine in DICOM's patient coordinates (LPS)."""
        return LPS_TO_RAS @ self.affine

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


def load_dataset(item: DicomInput) -> Dataset:
    """A dataset from a Dataset, a path or the bytes of a file, read tolerantly (no preamble, no meta)."""
    if isinstance(item, Dataset):
        ds = item
    elif isinstance(item, bytes):
        ds = pydicom.dcmread(io.BytesIO(item), force=True)
    else:
        ds = pydicom.dcmread(str(item), force=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def as_part10(raw: bytes) -> bytes:
    """The bytes of a DICOM file with the 128-byte preamble and DICM prefix, as strict readers need."""
    if raw[128:132] == b"DICM":
        return raw
    if raw[:4] == b"DICM":
        return b"\0" * 128 + raw
    if raw[:2] == b"\x02\x00":  # file meta group without preamble or prefix
        return b"\0" * 128 + b"DICM" + raw
    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    ds.ensure_file_meta()
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def shallow_copy(ds: Dataset) -> Dataset:
    """A copy of `ds` whose top-level elements can be set or added without touching `ds` (values shared)."""
    out = Dataset()
    for element in ds:
        out.add(copy.copy(element))
    if getattr(ds, "file_meta", None) is not None:
        out.file_meta = ds.file_meta
    out.preamble = getattr(ds, "preamble", None)
    return out


def orientation_of(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(row cosine, column cosine) of an image, unit length, in LPS."""
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        raise ValueError(f"Instance {ds.get('SOPInstanceUID', '?')} has no patient position or orientation.")
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    row, col = iop[:3], iop[3:]
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def sort_instances(items: Iterable[DicomInput]) -> list[Dataset]:
    """The image instances of one series, sorted by ascending position along the slice normal.

    Instances without pixel data are skipped; `ValueError` for mixed series, orientations or sizes,
    multi-frame images, or two slices at one position.
    """
    datasets = [ds for ds in map(load_dataset, items) if "PixelData" in ds]
    if not datasets:
        raise ValueError("The series has no image instances.")
    first = datasets[0]
    row, col = orientation_of(first)
    normal = np.cross(row, col)
    for ds in datasets:
        _check_same_geometry(first, ds, row, col)
    datasets.sort(key=lambda ds: float(np.dot(_position(ds), normal)))
    depths = [float(np.dot(_position(ds), normal)) for ds in datasets]
    if any(b - a < 1e-4 for a, b in zip(depths, depths[1:], strict=False)):
        raise ValueError("Two instances of the series lie at the same position.")
    return datasets


def _check_same_geometry(first: Dataset, ds: Dataset, row: np.ndarray, col: np.ndarray) -> None:
    if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
        raise ValueError("The instances belong to more than one series.")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("Multi-frame images are not supported; expected one slice per instance.")
    r, c = orientation_of(ds)
    if np.abs(r - row).max() > _ORIENTATION_TOLERANCE or np.abs(c - col).max() > _ORIENTATION_TOLERANCE:
        raise ValueError("The instances of the series have different orientations.")
    if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
        raise ValueError("The instances of the series have different image sizes.")
    if _pixel_spacing(ds) != _pixel_spacing(first):
        raise ValueError("The instances of the series have different pixel spacings.")


def _position(ds: Dataset) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm: the gap between rows, then between columns."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
    return float(spacing[0]), float(spacing[1])


def lps_affine(datasets: Sequence[Dataset]) -> np.ndarray:
    """The LPS affine of instances already sorted by `sort_instances`."""
    row, col = orientation_of(datasets[0])
    row_spacing, col_spacing = _pixel_spacing(datasets[0])
    positions = np.stack([_position(ds) for ds in datasets])
    if len(datasets) > 1:
        step = (positions[-1] - positions[0]) / (len(datasets) - 1)
    else:
        gap = datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0
        step = np.cross(row, col) * float(gap)
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing
    affine[:3, 1] = col * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return affine


def hounsfield(ds: Dataset) -> np.ndarray:
    """One instance's pixels after its own RescaleSlope/RescaleIntercept, as float32 `[column, row]`."""
    stored = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (stored * slope + intercept).astype(np.float32).T


def read_series(items: Iterable[DicomInput]) -> SeriesVolume:
    """Build the volume of one DICOM series from datasets, file paths or file bytes, in any order."""
    datasets = sort_instances(items)
    array = np.stack([hounsfield(ds) for ds in datasets], axis=2)
    affine = lps_affine(datasets)
    first = datasets[0]
    return SeriesVolume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        affine=LPS_TO_RAS @ affine,
        instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        series_uid=str(first.get("SeriesInstanceUID", "")),
        study_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        positions=np.stack([_position(ds) for ds in datasets]),
    )


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write `array` with a RAS `affine` as NIfTI (qform and sform set, millimetres); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path


def write_nifti(volume: SeriesVolume, path: Path) -> Path:
    """Write the volume's HU array (float32) as a NIfTI image; return the path."""
    return save_nifti(volume.array.astype(np.float32), volume.affine, path)


def write_label_nifti(labels: np.ndarray, volume: SeriesVolume, path: Path) -> Path:
    """Write a uint8 label array that lies on `volume`'s grid as NIfTI with the volume's affine."""
    if tuple(labels.shape) != volume.shape:
        raise ValueError(f"The label array's shape {labels.shape} differs from the image's {volume.shape}.")
    return save_nifti(np.asarray(labels, dtype=np.uint8), volume.affine, path)


def to_label_grid(label_image: nib.Nifti1Image, volume: SeriesVolume) -> np.ndarray:
    """A label NIfTI (e.g. a model's output) as uint8 on `volume`'s grid, reoriented when needed.

    The label image must cover the same voxels up to axis flips and permutations (what MONAI's
    Orientationd/Invertd produce); anything else raises `ValueError`.
    """
    src = nib.orientations.io_orientation(label_image.affine)
    dst = nib.orientations.io_orientation(volume.affine)
    transform = nib.orientations.ornt_transform(src, dst)
    data = np.asarray(label_image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    data = nib.orientations.apply_orientation(data, transform)
    affine = label_image.affine @ nib.orientations.inv_ornt_aff(transform, label_image.shape[:3])
    if data.shape != volume.shape or not np.allclose(affine, volume.affine, atol=1e-2):
        raise ValueError("The label image does not lie on the series' voxel grid.")
    return np.rint(data).astype(np.uint8)
