"""A cap on the voxels of a volume, read from its headers before a single voxel is decompressed.

A gzip NIfTI of a few kilobytes can claim 4000 x 4000 x 4000 voxels; reading it would allocate 64 GB
before finding out. Every volume the API process decodes (a dataset image, a label a viewer sends, a
DICOM SEG) is first measured here from its header alone:

- NIfTI-1/NIfTI-2: the header block only (nibabel's header classes over the first 540 bytes, decompressed
  by nibabel's opener and no further: extensions and data are never read);
- NRRD: `sizes` of the header pynrrd parsed;
- DICOM: Rows x Columns x NumberOfFrames of each instance (read with `stop_before_pixels`), summed over
  a series;
- PNG/JPEG: width x height (Pillow opens lazily).

Over the cap is `Invalid` (HTTP 400) naming the shape, the count and the setting, `MEDCLOUD_MAX_VOXELS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medcloud.errors import Invalid

SETTING = "MEDCLOUD_MAX_VOXELS"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
_DICOM_SIZE_TAGS = ["Rows", "Columns", "NumberOfFrames"]


def check_shape(shape: Sequence[int], max_voxels: int, *, what: str) -> None:
    """`Invalid` when a volume of `shape` has more than `max_voxels` voxels (or a negative size)."""
    sizes = [int(n) for n in shape]
    if any(n < 0 for n in sizes):
        raise Invalid(f"{what} declares a negative size {'x'.join(map(str, sizes))} in its header.")
    check_count(math.prod(sizes), max_voxels, what=what, shape=sizes)


def check_count(count: int, max_voxels: int, *, what: str, shape: Sequence[int] | None = None) -> None:
    """`Invalid` naming the count (and shape) when `count` voxels are more than `max_voxels`."""
    if count > max_voxels:
        sizes = f"{' x '.join(map(str, shape))} = " if shape else ""
        raise Invalid(
            f"{what} has {sizes}{count:,} voxels, more than this server reads ({max_voxels:,} voxels, {SETTING})."
        )


def nifti_shape(path: Path | str) -> tuple[int, ...]:
    """The data shape in a NIfTI file's header (gzip or not), reading the header block only."""
    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header
    from nibabel.openers import ImageOpener
    from nibabel.spatialimages import HeaderDataError

    name = Path(path).name
    try:
        with ImageOpener(str(path)) as handle:  # decompresses as much as is read: one header block
            block = handle.read(Nifti2Header.template_dtype.itemsize)
    except (OSError, EOFError, ValueError) as exc:
        raise Invalid(f"{name} cannot be read as NIfTI: {_reason(exc)}.") from None
    for klass in (Nifti1Header, Nifti2Header):
        size = klass.template_dtype.itemsize
        if len(block) >= size and size in (int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")):
            try:
                return tuple(int(n) for n in klass(block[:size], check=False).get_data_shape())
            except (HeaderDataError, ValueError) as exc:
                raise Invalid(f"{name} has a NIfTI header that cannot be read: {_reason(exc)}.") from None
    raise Invalid(f"{name} cannot be read as NIfTI: its header size is neither 348 nor 540.")


def nrrd_shape(header: dict[str, Any]) -> tuple[int, ...]:
    """`sizes` of a parsed NRRD header; `Invalid` when it has none."""
    try:
        return tuple(int(n) for n in header["sizes"])
    except (KeyError, TypeError, ValueError):
        raise Invalid("The NRRD header has no valid `sizes` field.") from None


def dataset_voxels(ds: Any) -> int:
    """Rows x Columns x NumberOfFrames of a pydicom dataset (0 for an instance without an image)."""
    try:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise Invalid("A DICOM instance has unreadable Rows, Columns or NumberOfFrames.") from None
    if min(rows, columns, frames) < 0:
        raise Invalid("A DICOM instance declares a negative Rows, Columns or NumberOfFrames.")
    return rows * columns * frames


def dicom_voxels(paths: Iterable[Path | str]) -> int:
    """Voxels of the instances of a series, from their headers (pixel data is never read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    total = 0
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True, specific_tags=_DICOM_SIZE_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise Invalid(f"{Path(path).name} cannot be read as DICOM: {_reason(exc)}.") from None
        total += dataset_voxels(ds)
    return total


def picture_shape(path: Path | str) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG from its header (Pillow decodes nothing on open)."""
    from PIL import Image

    try:
        with Image.open(str(path)) as image:
            return int(image.size[0]), int(image.size[1])
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise Invalid(f"{Path(path).name} cannot be read as an image: {_reason(exc)}.") from None


def check_files(files: Sequence[Path], max_voxels: int, *, what: str) -> None:
    """Check every volume among an image's local files: each NIfTI, NRRD and picture, and the DICOM
    instances as one series. Files of other kinds are left to their readers."""
    for path in files:
        name = path.name.lower()
        if name.endswith(_NIFTI_SUFFIXES):
            check_shape(nifti_shape(path), max_voxels, what=what)
        elif name.endswith(_NRRD_SUFFIXES):
            check_shape(nrrd_shape(_read_nrrd_header(path)), max_voxels, what=what)
        elif name.endswith(_PICTURE_SUFFIXES):
            check_shape(picture_shape(path), max_voxels, what=what)
    # `.dcm` files are a series wherever they are; files without a suffix only when nothing else is there
    # (a manifest's folder of one series), as `datasets.volumes.load_volume` reads them.
    dicom = [path for path in files if path.suffix.lower() in _DICOM_SUFFIXES]
    if dicom and (len(dicom) == len(files) or all(path.suffix.lower() == ".dcm" for path in dicom)):
        check_count(dicom_voxels(dicom), max_voxels, what=what)


def _read_nrrd_header(path: Path) -> dict[str, Any]:
    import nrrd

    try:
        return nrrd.read_header(str(path))
    except Exception as exc:  # noqa: BLE001 - pynrrd raises several kinds for a malformed header
        raise Invalid(f"{path.name} has an NRRD header that cannot be read: {_reason(exc)}.") from None


def _reason(exc: BaseException) -> str:
    """A short reason without the file's path (an OSError's text names it)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200].rstrip(".")
