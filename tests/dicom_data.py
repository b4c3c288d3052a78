"""Synthetic CT series (and SEGs) stored in a real Orthanc, for the DICOMweb API tests and guide 001; and the
synthetic CT volumes with 3-class label maps that the DICOM reading and SEG tests write as series."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcloud.demo.synthetic import synthetic_ct_arrays
from medcloud.imaging.seg import labels_to_seg
from medcloud.imaging.synthetic_dicom import AXIAL, write_ct_series

LABELS = {"1": "liver", "2": "right_kidney", "3": "spleen"}  # the classes of the label maps of ct_and_labels


def ct_and_labels(seed: int = 1, shape: tuple[int, int, int] = (24, 20, 12)) -> tuple[np.ndarray, np.ndarray]:
    """Integer HU (what 16-bit stored values with slope 1 can hold exactly) and a 3-class label map."""
    rad_max = min(6, (min(shape) - 1) // 2)
    image, label = synthetic_ct_arrays(seed=seed, shape=shape, num_objs=3, rad_max=rad_max, rad_min=max(1, rad_max - 2))
    hu = np.rint(image * 4.0 - 900.0).astype(np.float32)  # spread over -1100..-300 and beyond
    rng = np.random.RandomState(seed)
    labels = (label * rng.randint(1, 4, size=shape)).astype(np.uint8)
    labels[:, :, 0] = 0  # an empty slice: its frames are left out of the SEG
    return hu, labels


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
