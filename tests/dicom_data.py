"""Synthetic CT series (and SEGs) stored in a real Orthanc, for the DICOMweb API tests and guide 001."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcloud.demo.synthetic import synthetic_ct_arrays
from medcloud.imaging.seg import labels_to_seg
from medcloud.imaging.synthetic_dicom import AXIAL, write_ct_series


@dataclass
class StoredSeries:
    uid: str
    study_uid: str
    hu: np.ndarray
    label: np.ndarray
    datasets: list


def store_ct(
    orthanc,
    *,
    seed: int,
    shape=(64, 64, 64),
    orientation=AXIAL,
    spacing=(1.5, 1.5, 2.0),
    shuffle: bool = True,
    patient_id: str | None = None,
) -> StoredSeries:
    """A noisy sphere CT (HU, intercept -1024) stored in Orthanc; returns its truth."""
    rad_max = min(16, (min(shape) - 1) // 2)
    hu, label = synthetic_ct_arrays(seed=seed, shape=shape, rad_max=rad_max, rad_min=max(1, rad_max // 2))
    hu = np.rint(hu).astype(np.float32)
    datasets = write_ct_series(
        hu, orientation=orientation, spacing=spacing, shuffle=shuffle, seed=seed, patient_id=patient_id or f"P{seed}"
    )
    orthanc.stow(datasets)
    return StoredSeries(
        uid=str(datasets[0].SeriesInstanceUID),
        study_uid=str(datasets[0].StudyInstanceUID),
        hu=hu,
        label=label,
        datasets=datasets,
    )


def store_seg(orthanc, series: StoredSeries, labels: dict[str, str], label_volume: np.ndarray | None = None) -> str:
    """Store a SEG of the series (its true sphere under the first label's index unless given); returns its uid."""
    if label_volume is None:
        label_volume = (series.label > 0).astype(np.uint8) * int(next(iter(labels)))
    seg = labels_to_seg(label_volume, series.datasets, labels)
    orthanc.stow([seg])
    return str(seg.SeriesInstanceUID)
