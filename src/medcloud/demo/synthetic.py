"""Synthetic CT volumes, RGB frames and an object-storage style dataset for demos and tests."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import create_test_image_3d
from PIL import Image

CT_SPACING: tuple[float, float, float] = (1.5, 1.5, 2.0)
FOREGROUND_HU = 100.0
BACKGROUND_HU = -50.0
CT_ORIGIN: tuple[float, float, float] = (100.0, 120.0, -40.0)
RGB_CLASSES: dict[int, str] = {0: "in body", 1: "out body"}
# Stable ids: the same file name always gets the same uuid, on every machine.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://medcloud.local/demo-dataset")


def ct_affine(
    spacing: tuple[float, float, float] = CT_SPACING,
    *,
    origin: tuple[float, float, float] = CT_ORIGIN,
    tilt_deg: float = 0.0,
) -> np.ndarray:
    """Affine of a synthetic CT: LPS-like flipped x/y axes as from DICOM, so Orientationd/Invertd do real work.

    `tilt_deg` turns the voxel axes about the patient's left-right axis (a gantry tilt): an oblique volume,
    whose axes are not the world's, for viewers and resampling tests.
    """
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    if tilt_deg:
        angle = np.deg2rad(tilt_deg)
        turn = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
        affine[:3, :3] = turn @ affine[:3, :3]
    affine[:3, 3] = origin
    return affine


def synthetic_ct_arrays(
    *,
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 64),
    num_objs: int = 1,
    rad_max: int = 16,
    rad_min: int = 8,
    noise_max: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image in HU as float32, label as uint8 0/1) of one noisy sphere per object."""
    unit, label = create_test_image_3d(
        *shape,
        num_objs=num_objs,
        rad_max=rad_max,
        rad_min=rad_min,
        noise_max=noise_max,
        num_seg_classes=1,
        random_state=np.random.RandomState(seed),
    )
    # Map [0, 1] to a soft-tissue-like HU range that the spleen bundle's window (-57..164) covers.
    image = BACKGROUND_HU + (FOREGROUND_HU - BACKGROUND_HU) * unit
    return image.astype(np.float32), (label > 0).astype(np.uint8)


def write_synthetic_ct(
    image_path: Path,
    label_path: Path,
    *,
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: tuple[float, float, float] = CT_SPACING,
    affine: np.ndarray | None = None,
    num_objs: int = 1,
    rad_max: int = 16,
    rad_min: int = 8,
    label_value: int = 1,
    dtype: type = np.float32,
) -> tuple[Path, Path]:
    """Write a synthetic CT NIfTI (HU) and its uint8 label (0 and `label_value`) on the same grid; return both paths.

    `affine` (default `ct_affine(spacing)`, LPS-like) may be any 4x4, e.g. `ct_affine(spacing, tilt_deg=20)` for
    an oblique volume. `dtype=np.int16` stores whole HU as scanners do (half the bytes of float32).
    """
    image, label = synthetic_ct_arrays(seed=seed, shape=shape, num_objs=num_objs, rad_max=rad_max, rad_min=rad_min)
    affine = ct_affine(spacing) if affine is None else np.asarray(affine, dtype=np.float64)
    save_ct_image(image, affine, image_path, dtype=dtype)
    save_label(label * label_value, affine, label_path)
    return image_path, label_path


def save_label(label: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write a label volume as a uint8 NIfTI."""
    _save_nifti(label.astype(np.uint8), affine, path)
    return path


def save_ct_image(image: np.ndarray, affine: np.ndarray, path: Path, *, dtype: type = np.float32) -> Path:
    """Write HU values as a NIfTI of `dtype` (integer types are rounded)."""
    values = np.round(image).astype(dtype) if np.issubdtype(dtype, np.integer) else image.astype(dtype)
    _save_nifti(values, affine, path)
    return path


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def synthetic_rgb_array(*, label: int, seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Return an HxWx3 uint8 frame: class 0 is reddish with soft blobs, class 1 is bluish-grey with stripes.

    The classes differ in texture as well as colour because the bundles normalise each channel on its own,
    which removes most of a pure colour difference.
    """
    if label not in RGB_CLASSES:
        raise ValueError(f"label must be one of {sorted(RGB_CLASSES)}, got {label}")
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    if label == 0:
        base = np.array([170.0, 70.0, 60.0])
        pattern = np.zeros(size, np.float32)
        for _ in range(rs.randint(3, 7)):
            cy, cx, r = rs.uniform(0, size[0]), rs.uniform(0, size[1]), rs.uniform(4, 12)
            pattern += rs.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    else:
        base = np.array([90.0, 110.0, 150.0])
        angle, period = rs.uniform(0, np.pi), rs.uniform(4, 10)
        pattern = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rs.uniform(0, 6.3))
    tint = rs.uniform(0.8, 1.2, size=3)
    noise = rs.normal(0, 6, size=(*size, 3))
    rgb = base * tint + 50.0 * pattern[..., None] + noise
    # Clip away from 0 so NormalizeIntensityd(nonzero=True) sees every pixel.
    return np.clip(rgb, 1, 255).astype(np.uint8)


def write_synthetic_rgb(path: Path, *, label: int, seed: int, size: tuple[int, int] = (64, 64)) -> Path:
    """Write a synthetic RGB PNG of class `label` (0 "in body", 1 "out body") and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_rgb_array(label=label, seed=seed, size=size), mode="RGB").save(path)
    return path


def stable_id(relative_path: str) -> str:
    """Return the uuid5 string the demo manifest uses for a file."""
    return str(uuid.uuid5(_ID_NAMESPACE, relative_path))


def _entry(image: str, label: str | None = None) -> dict[str, dict[str, object]]:
    entry: dict[str, dict[str, object]] = {"image": {"path": [image], "id": stable_id(image)}}
    if label is not None:
        entry["label"] = {"path": [label], "id": stable_id(label)}
    return entry


def write_demo_dataset(root: Path, *, n_ct: int = 4, n_rgb: int = 4) -> Path:
    """Write CT NIfTIs (imagesTr/labelsTr, the last one unlabeled), RGB PNGs (images2d, unlabeled) and manifest.json.

    Paths in the manifest are relative to its folder; ids are uuid5 of the path, so they are stable.
    Returns the manifest's path.
    """
    if n_ct < 2:
        raise ValueError("n_ct must be at least 2: one labeled and one unlabeled volume")
    data = []
    for i in range(n_ct):
        image, label = f"imagesTr/ct_{i:03d}.nii.gz", f"labelsTr/ct_{i:03d}.nii.gz"
        if i < n_ct - 1:
            write_synthetic_ct(root / image, root / label, seed=5000 + i)
            data.append(_entry(image, label))
        else:
            _save_nifti(synthetic_ct_arrays(seed=5000 + i)[0], ct_affine(), root / image)
            data.append(_entry(image))
    for i in range(n_rgb):
        image = f"images2d/frame_{i:03d}.png"
        write_synthetic_rgb(root / image, label=i % 2, seed=6000 + i)
        data.append(_entry(image))
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"label_key": ["label"], "data": data}, indent=2))
    return manifest
