"""An image of a dataset, and its current label, as raw NRRD for a browser viewer.

Same header and voxel order as the segmentation outputs (`inference/nrrd_writer.write_raw_nrrd`): space
right-anterior-superior, space directions = the NIfTI affine's `[:3, :3].T`, space origin its translation,
first axis fastest. The volume is the cached image's (`datasets.actions.fetch_cached`, so a later inference on
the id downloads nothing), read with nibabel as MONAI's LoadImage reads it; a DICOM series (DICOMweb caches
its NIfTI beside the instances; a manifest may list the folder of one) is read with `imaging.series`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nrrd.writer import _handle_header, _write_header

from medcloud.context import Context
from medcloud.datasets import actions, service
from medcloud.datasets.orm import Dataset
from medcloud.errors import Invalid, NotFound
from medcloud.imaging import voxels
from medcloud.imaging.series import SeriesVolume, read_series, to_label_grid
from medcloud.sources.base import DataSource

_INT16 = np.iinfo(np.int16)
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")


@dataclass
class Volume:
    """Voxels `array[x, y, z]` (first axis fastest on the wire) and the RAS affine of the image."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    def grid(self) -> SeriesVolume:
        """The image's grid as `imaging.series` describes one (no voxels copied)."""
        empty = np.broadcast_to(np.zeros((), dtype=np.float32), self.shape)
        return SeriesVolume(array=empty, affine=self.affine, instance_uids=[])


def image_files(ctx: Context, row: Dataset, image_id: str) -> tuple[list[Path], DataSource | None]:
    """Local files of the image (cached: fetched once), and the opened source when it had to be opened.

    An id that is not one of the dataset's images is `NotFound` (the id is part of the URL path).
    """
    files = ctx.cache.lookup(row.id, image_id)
    if files is not None:
        return files, None
    source = service.source_of(row, ctx.box, settings=ctx.settings)
    try:
        source.check_image(image_id)
    except Invalid:
        raise NotFound(f"Image {image_id} is not in dataset {row.id}.") from None
    return actions.fetch_cached(ctx, dataset_id=row.id, image_id=image_id, source=source), source


def load_volume(files: list[Path], image_id: str, *, max_voxels: int) -> Volume:
    """The image as a 3-D volume: its NIfTI (what the model reads), else its DICOM series; `Invalid` otherwise,
    and before anything is decompressed when its headers declare more than `max_voxels` voxels."""
    what = f"Image {image_id}"
    niftis = [f for f in files if f.name.lower().endswith((".nii", ".nii.gz"))]
    if niftis:
        voxels.check_shape(voxels.nifti_shape(niftis[0]), max_voxels, what=what)
        try:
            image = nib.load(str(niftis[0]))
            stored = _voxels(image)
        except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
            # a file in the dataset that is not the NIfTI it claims to be (or is truncated): say so, never a 500
            raise Invalid(f"Image {image_id} ({niftis[0].name}) cannot be read as NIfTI: {exc}") from None
        array = _as_3d(stored, image_id)
        return Volume(array=array, affine=np.asarray(image.affine, dtype=np.float64))
    dicom = [f for f in files if f.suffix.lower() in _DICOM_SUFFIXES]
    if dicom and len(dicom) == len(files):
        voxels.check_count(voxels.dicom_voxels(dicom), max_voxels, what=what)
        try:
            series = read_series(dicom)
        except (ValueError, AttributeError, TypeError) as exc:
            raise Invalid(f"Image {image_id} cannot be read as a DICOM series: {exc}") from None
        return Volume(array=series.array, affine=series.affine)
    names = ", ".join(sorted({f.name for f in files})[:3])
    raise Invalid(f"Image {image_id} ({names}) is not a 3-D volume (a NIfTI file or a DICOM series).")


def _voxels(image: nib.Nifti1Image) -> np.ndarray:
    """The stored integers when the file has no scaling (no float copy of an int16 CT), else the scaled values."""
    slope, inter = image.dataobj.slope, image.dataobj.inter
    if np.issubdtype(image.get_data_dtype(), np.integer) and slope in (1, None) and inter in (0, None):
        return np.asarray(image.dataobj.get_unscaled())
    return np.asarray(image.dataobj)


def _as_3d(array: np.ndarray, image_id: str) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise Invalid(f"Image {image_id} has {array.ndim} dimensions; the viewer shows 3-D volumes only.")
    return array


def wire_dtype(array: np.ndarray) -> np.dtype:
    """int16 when every voxel is an integer in int16's range (CT), else float32."""
    if array.size == 0:
        return np.dtype("<i2")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        low, high = int(array.min()), int(array.max())
        return np.dtype("<i2") if _INT16.min <= low and high <= _INT16.max else np.dtype("<f4")
    low, high = float(array.min()), float(array.max())  # NaN or inf in the volume shows here
    if not (_INT16.min <= low and high <= _INT16.max) or not np.array_equal(np.rint(array), array):
        return np.dtype("<f4")
    return np.dtype("<i2")


def nrrd_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray) -> bytes:
    """The header `write_raw_nrrd` writes for a volume of this shape, type and affine (pynrrd's own writer)."""
    affine = np.asarray(affine, dtype=float)
    header: dict = {
        "encoding": "raw",
        "endian": "little",
        "space": "right-anterior-superior",
        "space directions": affine[:3, :3].T,
        "space origin": affine[:3, 3],
    }
    shaped = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=dtype), shape=shape, strides=(0,) * len(shape))
    out = io.BytesIO()
    _write_header(out, _handle_header(shaped, header, "F"))
    return out.getvalue()


@dataclass
class NrrdBody:
    """A raw NRRD answer: its header, then the voxels as one Fortran-ordered buffer (not copied again)."""

    header: bytes
    data: memoryview

    @property
    def length(self) -> int:
        return len(self.header) + self.data.nbytes

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        yield self.header
        for start in range(0, self.data.nbytes, size):
            yield bytes(self.data[start : start + size])


def nrrd_body(array: np.ndarray, affine: np.ndarray, dtype: np.dtype) -> NrrdBody:
    """`array` as a raw NRRD of `dtype` (little endian), first axis fastest."""
    data = np.asfortranarray(array).astype(dtype.newbyteorder("<"), order="F", copy=False)
    return NrrdBody(header=nrrd_header(data.shape, data.dtype, affine), data=memoryview(data.T).cast("B"))


def label_volume(ctx: Context, row: Dataset, image_id: str, labels: dict[str, str] | None) -> tuple[Volume, str]:
    """The image's current label as uint8 on the image's grid, and its label id; `NotFound` when it has none.

    `labels` (the experiment's `model_params.labels`) turn a DICOM SEG's segments into indices; required for
    DICOMweb datasets (the caller checks).
    """
    files, source = image_files(ctx, row, image_id)
    image = load_volume(files, image_id, max_voxels=ctx.settings.max_voxels)
    source = source or service.source_of(row, ctx.box, settings=ctx.settings)
    from medcloud.sources.objectstore import ObjectStoreSource

    if isinstance(source, ObjectStoreSource):
        entry = source.get(image_id)
        if entry.label_id is None:
            raise NotFound(f"Image {image_id} has no label yet.")
        label_files = ctx.cache.get_or_fetch(
            row.id, f"label:{entry.label_id}", lambda dest: source.fetch_label(image_id, dest)
        )
        label_id = entry.label_id
    else:
        from medcloud.learning.dicom_labels import labels_key, latest_label, notified_labels

        segs = source.labels_of(image_id)
        if not segs:
            raise NotFound(f"Image {image_id} has no label yet: no DICOM SEG references the series.")
        with ctx.db.session() as session:
            label_id = latest_label(notified_labels(session, row.id, image_id), segs)
        labels = labels or {}
        dcm = [f for f in files if f.suffix == ".dcm"]

        def fetch(dest: Path) -> list[Path]:
            return [source.fetch_label(label_id, read_series(dcm), labels, dest)]

        label_files = ctx.cache.get_or_fetch(row.id, f"label:{label_id}:{labels_key(labels)}", fetch)
    niftis = [f for f in label_files if f.name.lower().endswith((".nii", ".nii.gz"))]
    if not niftis:
        raise Invalid(f"The label {label_id} of image {image_id} is not a NIfTI file; it cannot be shown.")
    voxels.check_shape(voxels.nifti_shape(niftis[0]), ctx.settings.max_voxels, what=f"The label {label_id}")
    try:
        label = to_label_grid(nib.load(str(niftis[0])), image.grid())
    except ValueError as exc:
        raise Invalid(f"The label {label_id} of image {image_id} does not lie on the image: {exc}") from None
    return Volume(array=label, affine=image.affine), label_id


def label_nrrd(ctx: Context, row: Dataset, image_id: str, labels: dict[str, str] | None) -> NrrdBody:
    volume, _label_id = label_volume(ctx, row, image_id, labels)
    return nrrd_body(volume.array, volume.affine, np.dtype(np.uint8))
