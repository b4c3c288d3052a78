"""VISTA-3D geometry: the official preprocessing, original-voxel ↔ preprocessed-voxel maps, and output labels.

The official bundle (`configs/inference.json`) loads the image, resamples it to 1.5 mm (bilinear),
crops to the foreground (HU > 0, margin 10), windows the intensity to [0, 1] and reorients to RAS.
Every step keeps the MetaTensor affine, so one 4x4 matrix, `inv(preprocessed affine) @ original
affine`, maps an original voxel index to a preprocessed one: that maps the user's points, and its
use in reverse (nearest neighbour, zero outside the crop) brings the labels back to the original
grid, as the official `Invertd` does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from medcloud.errors import Invalid

NOT_REACHED = 255  # label of voxels no point window reached (the official bundle's nan_to_num(nan=255))


@dataclass(frozen=True)
class PreprocessSettings:
    """The official bundle's preprocessing values (`resample_spacing`, the ScaleIntensityRanged window, …)."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    a_min: float = -963.8247715525971
    a_max: float = 1053.678477684517
    crop_margin: int = 10
    axcodes: str = "RAS"


@dataclass
class PreparedImage:
    """One preprocessed image: the network input and how to get back to the original grid."""

    tensor: MetaTensor  # [1, H, W, D] in [0, 1], RAS, 1.5 mm, cropped
    to_prepared: np.ndarray  # 4x4: original voxel index -> preprocessed voxel index
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray  # RAS affine of the original grid


def preprocessing(
    settings: PreprocessSettings,
    device: torch.device | str = "cpu",
    keys: Sequence[str] = ("image",),
    modes: Sequence[str] = ("bilinear",),
) -> Compose:
    """The official preprocessing (order and values as in `configs/inference.json`); `keys[0]` is the image."""
    image = keys[0]
    return Compose(
        [
            LoadImaged(keys=list(keys), image_only=True),
            EnsureChannelFirstd(keys=list(keys)),
            EnsureTyped(keys=list(keys), device=device, track_meta=True),
            Spacingd(keys=list(keys), pixdim=settings.spacing, mode=list(modes)),
            CropForegroundd(
                keys=list(keys),
                source_key=image,
                margin=settings.crop_margin,
                allow_smaller=True,
                select_fn=positive_or_all,
            ),
            ScaleIntensityRanged(
                keys=image, a_min=settings.a_min, a_max=settings.a_max, b_min=0.0, b_max=1.0, clip=True
            ),
            Orientationd(keys=list(keys), axcodes=settings.axcodes),
            CastToTyped(keys=image, dtype=torch.float32),
        ]
    )


def positive_or_all(x: torch.Tensor) -> torch.Tensor:
    """CropForeground's `is_positive` (HU > 0), or every voxel when none is: no crop instead of an empty image."""
    positive = x > 0
    return positive if bool(positive.any()) else torch.ones_like(positive)


def prepare(image: str | Path, settings: PreprocessSettings, device: torch.device | str = "cpu") -> PreparedImage:
    """Load and preprocess one image: a NIfTI (or other MONAI-readable) file, or a folder holding one DICOM series.

    A folder is read with `medcloud.imaging.series` (slices sorted by position, RAS affine, `[column, row,
    slice]` order, as the server converts series to NIfTI); MONAI's own folder reader gets the slice
    spacing of an unsorted series wrong.
    """
    if Path(image).is_dir():
        with tempfile.TemporaryDirectory(prefix="vista3d-series-") as tmp:
            return prepare(_series_to_nifti(Path(image), Path(tmp) / "series.nii"), settings, device)
    data = preprocessing(settings, device)({"image": str(image)})
    tensor: MetaTensor = data["image"]
    original = np.asarray(torch.as_tensor(tensor.meta["original_affine"]).double().cpu().numpy())
    prepared = np.asarray(torch.as_tensor(tensor.affine).double().cpu().numpy())
    shape = tuple(int(s) for s in np.asarray(tensor.meta["spatial_shape"]).reshape(-1)[:3])
    return PreparedImage(tensor, np.linalg.inv(prepared) @ original, shape, original)  # type: ignore[arg-type]


def _series_to_nifti(folder: Path, target: Path) -> Path:
    from medcloud.imaging.series import read_series, write_nifti

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    try:
        return write_nifti(read_series(files), target)
    except Exception as exc:
        raise Invalid(f"The image folder {folder.name} is not one readable DICOM series: {exc}") from None


def map_points(points: Sequence[Sequence[float]], matrix: np.ndarray) -> np.ndarray:
    """Apply a 4x4 voxel-to-voxel matrix to [x, y, z] points; returns an (N, 3) float array."""
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def to_original_grid(
    labels: torch.Tensor,
    to_prepared: np.ndarray,
    shape: Sequence[int],
    chunk_voxels: int = 1 << 22,
    index: torch.Tensor | None = None,
) -> np.ndarray:
    """Nearest-neighbour sample preprocessed `labels` [H, W, D] at every original voxel; 0 outside them.

    `index` is `original_grid_index(to_prepared, shape, labels.shape)`, when the caller kept it.
    """
    shape = tuple(int(s) for s in shape)
    if index is None:
        index = original_grid_index(to_prepared, shape, tuple(labels.shape), chunk_voxels, labels.device)
    src = torch.cat([labels.to(torch.uint8).flatten(), torch.zeros(1, dtype=torch.uint8, device=labels.device)])
    return src[index.to(src.device)].reshape(shape).cpu().numpy()


def original_grid_index(
    to_prepared: np.ndarray,
    shape: Sequence[int],
    prepared_shape: Sequence[int],
    chunk_voxels: int = 1 << 22,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """For every original voxel, the flat index of its nearest preprocessed voxel; `prod(prepared_shape)` outside.

    Depends only on the geometry (the 4x4 map and both shapes), not on the labels: computed once per image.
    int32 when the preprocessed image has fewer than 2³¹ voxels (4 bytes per original voxel).
    """
    shape = tuple(int(s) for s in shape)
    limits = torch.tensor([int(s) for s in prepared_shape], device=device)
    outside = int(torch.prod(limits))
    dtype = torch.int32 if outside < 2**31 - 1 else torch.int64
    out = torch.empty(shape, dtype=dtype, device=device)
    linear = torch.as_tensor(to_prepared[:3, :3], dtype=torch.float64, device=device)
    grid_i, grid_j = torch.meshgrid(
        torch.arange(shape[0], device=device, dtype=torch.float64),
        torch.arange(shape[1], device=device, dtype=torch.float64),
        indexing="ij",
    )
    plane = grid_i[..., None] * linear[:, 0] + grid_j[..., None] * linear[:, 1]
    plane = plane + torch.as_tensor(to_prepared[:3, 3], dtype=torch.float64, device=device)
    strides = torch.tensor([int(prepared_shape[1]) * int(prepared_shape[2]), int(prepared_shape[2]), 1], device=device)
    step = max(1, chunk_voxels // max(1, shape[0] * shape[1]))
    for start in range(0, shape[2], step):
        ks = torch.arange(start, min(start + step, shape[2]), device=device, dtype=torch.float64)
        coords = plane[:, :, None, :] + ks[None, None, :, None] * linear[:, 2]
        index = torch.floor(coords + 0.5).long()
        inside = ((index >= 0) & (index < limits)).all(-1)
        flat = (index * strides).sum(-1)
        out[:, :, start : start + len(ks)] = torch.where(inside, flat, torch.full_like(flat, outside)).to(dtype)
    return out.flatten()


def logits_to_labels(logits: torch.Tensor, classes: Sequence[int] | None) -> torch.Tensor:
    """[B, H, W, D] logits to class indices, as `VistaPostTransformd`: argmax of the positive ones.

    NaN (a voxel no point window reached) becomes 255. Without classes (a point-only request) the
    foreground is 1, as in the official bundle.
    """
    not_reached = torch.isnan(logits).all(0)
    values = torch.nan_to_num(logits, nan=-1.0)
    positive = (values > 0).any(0)
    index = values.argmax(0)
    lookup = torch.as_tensor(list(classes) if classes else [1], device=logits.device, dtype=torch.int64)
    labels = torch.where(positive, lookup[index], torch.zeros_like(index))
    labels[not_reached] = NOT_REACHED
    return labels.to(torch.uint8)


class _ScipyMeasure:
    """`skimage.measure.label` on scipy.ndimage, for MONAI's VISTA-3D connected-component helpers."""

    @staticmethod
    def label(image: Any, connectivity: int | None = None, return_num: bool = False) -> Any:
        from scipy import ndimage

        array = np.asarray(image)
        structure = ndimage.generate_binary_structure(array.ndim, connectivity or array.ndim)
        labelled, num = ndimage.label(array, structure=structure)
        return (labelled, num) if return_num else labelled


def ensure_connected_components() -> None:
    """MONAI's point post-processing needs `skimage.measure`; fall back to scipy when it is not installed."""
    import monai.transforms.utils as mtu

    if not mtu.has_measure:
        mtu.measure, mtu.has_measure = _ScipyMeasure(), True
