"""A CT-only object-storage dataset for annotation demos: labeled volumes (train/eval) and unlabeled ones to annotate."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcloud.demo.synthetic import CT_SPACING, ct_affine, save_ct_image, save_label, synthetic_ct_arrays

# The small demo VISTA-3D knows one class: 3, "spleen" (the bright spheres); labels carry that value.
SPLEEN = 3
# Seeds of the annotation demo's volumes: held out from every demo bundle's training (those start at 1_000_000).
SEEDS_FROM = 8000


@dataclass(frozen=True)
class CtVolumes:
    """How the dataset's volumes look.

    256x256x128 voxels of 1.5x1.5x2 mm (384x384x256 mm), as the viewer benchmark uses. The spheres keep the
    sizes the small VISTA-3D learned (radius 12-20 voxels, 18-40 mm); 1 to 3 per volume.
    """

    shape: tuple[int, int, int] = (256, 256, 128)
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    rad_min: int = 12
    rad_max: int = 20
    num_objs: int = 1
    tilt_deg: float = 0.0  # non-zero: oblique volumes
    # VISTA-3D crops to HU > 0 (plus a margin) before its sliding window: a background kept below 0 HU makes
    # that crop the spheres' neighbourhood, so segmenting a class costs about what a 64^3 volume costs.
    background_max_hu: float | None = -5.0


def _volume(seed: int, volumes: CtVolumes) -> tuple[np.ndarray, np.ndarray]:
    image, label = synthetic_ct_arrays(
        seed=seed, shape=volumes.shape, num_objs=volumes.num_objs, rad_max=volumes.rad_max, rad_min=volumes.rad_min
    )
    if volumes.background_max_hu is not None:
        # squeeze the background's range [-50, max] into [-50, background_max_hu]: same texture, never foreground
        low, high = float(image.min()), float(image[label == 0].max())
        scale = (volumes.background_max_hu - low) / max(high - low, 1e-6)
        image = np.where(label > 0, image, low + (image - low) * scale).astype(np.float32)
    return image, label


def _id(namespace: str, relative_path: str) -> str:
    return str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, f"https://medcloud.local/{namespace}"), relative_path))


def write_ct_dataset(
    root: Path,
    *,
    n_labeled: int = 2,
    n_unlabeled: int = 6,
    volumes: CtVolumes = CtVolumes(),
    seed_from: int = SEEDS_FROM,
    label_value: int = SPLEEN,
    prefix: str = "ct",
) -> Path:
    """Write `imagesTr/<prefix>_NNN.nii.gz` (int16 HU), labels of the first `n_labeled` in `labelsTr/` and
    `manifest.json`; return the manifest's path. Ids are uuid5 of (folder name, path): stable across runs.

    Example:
        >>> write_ct_dataset(tmp / "ct", n_labeled=1, n_unlabeled=1, volumes=CtVolumes(shape=(64, 64, 32)))  # doctest: +SKIP
    """
    if n_labeled < 0 or n_unlabeled < 0 or n_labeled + n_unlabeled == 0:
        raise ValueError("write at least one volume")
    affine = ct_affine(volumes.spacing or CT_SPACING, tilt_deg=volumes.tilt_deg)
    data = []
    for i in range(n_labeled + n_unlabeled):
        image, label = f"imagesTr/{prefix}_{i:03d}.nii.gz", f"labelsTr/{prefix}_{i:03d}.nii.gz"
        values, mask = _volume(seed_from + i, volumes)
        save_ct_image(values, affine, root / image, dtype=np.int16)
        entry: dict[str, dict[str, object]] = {"image": {"path": [image], "id": _id(root.name, image)}}
        if i < n_labeled:
            save_label(mask * label_value, affine, root / label)
            entry["label"] = {"path": [label], "id": _id(root.name, label)}
        data.append(entry)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"label_key": ["label"], "data": data}, indent=2))
    return manifest
