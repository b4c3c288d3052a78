"""Tiny local datasets (a manifest and a few NIfTIs) and label NRRDs, for tests that need many of them fast."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def write_nifti(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def write_dataset(root: Path, images: dict[str, np.ndarray]) -> Path:
    """`root/manifest.json` listing `images/<id>.nii.gz` for each id; returns `root`."""
    data = []
    for image_id, array in images.items():
        write_nifti(array, root / "images" / f"{image_id}.nii.gz")
        data.append({"image": {"path": [f"images/{image_id}.nii.gz"], "id": image_id}})
    (root / "manifest.json").write_text(json.dumps({"data": data}))
    return root


def ct(seed: int, shape: tuple[int, int, int] = (16, 16, 8)) -> np.ndarray:
    return np.random.RandomState(seed).randint(-1000, 1000, size=shape).astype(np.int16)


def label_nrrd(volume: np.ndarray, affine: np.ndarray = AFFINE, *, encoding: str = "raw", **extra) -> bytes:
    """A label NRRD as pynrrd writes it, on the grid of `affine` (`extra`: more header fields)."""
    header = {
        "encoding": encoding,
        "space": "right-anterior-superior",
        "space directions": affine[:3, :3].T,
        "space origin": affine[:3, 3],
        **extra,
    }
    out = io.BytesIO()
    nrrd.write(out, volume, header, index_order="F")
    return out.getvalue()


def put_label(api, dataset_id: str, image_id: str, body: bytes, user: str = "alice"):  # type: ignore[no-untyped-def]
    return api.client.put(
        api.url(f"datasets/{dataset_id}/images/{image_id}/label"),
        content=body,
        headers={**api.headers(user), "Content-Type": "application/octet-stream"},
    )
