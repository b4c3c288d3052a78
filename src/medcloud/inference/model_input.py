"""Which path a model reads for an image: used by the API (real-time) and by a job's model process (batch)."""

from __future__ import annotations

from pathlib import Path

from medcloud.errors import Invalid


def model_input(files: list[Path], image_id: str) -> str:
    """What the model reads: a volume file if the source made one (DICOMweb: the series as NIfTI),
    the single file, or the folder holding a multi-file image (a DICOM series in a manifest)."""
    if not files:
        raise Invalid(f"Error: image {image_id} has no files.")
    volumes = [f for f in files if f.name.endswith((".nii.gz", ".nii", ".nrrd"))]
    if volumes:
        return str(volumes[0])
    return str(files[0]) if len(files) == 1 else str(_common_parent(files))


def _common_parent(files: list[Path]) -> Path:
    parent = files[0].parent
    while not all(f.is_relative_to(parent) for f in files):
        parent = parent.parent
    return parent
