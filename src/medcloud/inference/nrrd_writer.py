"""A MONAI ImageWriter that writes raw (not gzip) NRRD with pynrrd, registered for `.nrrd`.

The OHIF plugin reads the last N bytes of the NRRD as the voxels, so the data must be raw and in
the image's own voxel order (first axis fastest, as NIfTI and DICOM store it). MONAI's built-in
`.nrrd` writer needs ITK; this one needs only pynrrd.
"""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
from monai.data import NibabelWriter, image_writer, register_writer
from monai.data.utils import to_affine_nd
from monai.utils import convert_data_type


def write_raw_nrrd(path: Path | str, volume: np.ndarray, affine: np.ndarray | None, dtype=np.uint8) -> None:
    """Write `volume` (x, y, z) as raw NRRD; `affine` (RAS) becomes space directions and origin."""
    header: dict = {"encoding": "raw", "endian": "little"}
    if affine is not None and volume.ndim == 3:
        affine = np.asarray(affine, dtype=float)
        header["space"] = "right-anterior-superior"
        header["space directions"] = affine[:3, :3].T
        header["space origin"] = affine[:3, 3]
    nrrd.write(str(path), np.ascontiguousarray(volume).astype(dtype, copy=False), header, index_order="F")


def nrrd_to_nifti(path: Path) -> Path:
    """Replace a label NRRD written by `write_raw_nrrd` with a `.nii.gz` of the same voxels and geometry."""
    import nibabel as nib

    volume, header = nrrd.read(str(path), index_order="F")
    affine = np.eye(4)
    if "space directions" in header and "space origin" in header:
        affine[:3, :3] = np.asarray(header["space directions"], dtype=float).T
        affine[:3, 3] = np.asarray(header["space origin"], dtype=float)
    target = path.with_name(path.name.removesuffix(".nrrd") + ".nii.gz")
    image = nib.Nifti1Image(np.asarray(volume), affine)
    image.set_data_dtype(volume.dtype)
    nib.save(image, str(target))
    path.unlink()
    return target


class RawNrrdWriter(NibabelWriter):
    """NibabelWriter's data and affine handling, written out as raw NRRD."""

    def write(self, filename, verbose: bool = False, **obj_kwargs) -> None:  # type: ignore[no-untyped-def]
        data = convert_data_type(self.data_obj, np.ndarray)[0]
        dtype = self.output_dtype or data.dtype
        affine = None
        if self.affine is not None:
            affine = to_affine_nd(r=3, affine=convert_data_type(self.affine, np.ndarray)[0])
        write_raw_nrrd(filename, data, affine, dtype=np.dtype(dtype))


def register() -> None:
    """Make `.nrrd` resolve to RawNrrdWriter first (call once per model-host process)."""
    if not image_writer.SUPPORTED_WRITERS:
        image_writer.init()  # MONAI fills its table lazily only while it is empty: fill it before adding ours
    register_writer("nrrd", RawNrrdWriter)
