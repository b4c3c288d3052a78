"""Training items from a DICOMweb dataset: each labeled series as NIfTI, its latest SEG as a label volume.

Which SEG is "latest": the one named by the newest `notify` for the series (the API side reads that
from the notifications table, `notified_labels`; a worker gets it in its ticket), else the last one
the DICOMweb server lists.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medcloud.datasets import actions as dataset_actions
from medcloud.datasets.orm import Notification
from medcloud.imaging.series import read_series
from medcloud.jobs.ticket import DatasetInput
from medcloud.sources.dicomweb import DicomWebSource


def labels_key(labels: dict[str, str]) -> str:
    """Label volumes depend on the experiment's index → name map: cache them per map."""
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:12]


def notified_labels(session: Any, dataset_id: str, image_id: str) -> list[str]:
    """The label ids `notify` named for the image, newest first (API side: reads the database)."""
    query = (
        select(Notification.label_id)
        .where(
            Notification.dataset_id == dataset_id,
            Notification.image_id == image_id,
            Notification.section.in_(["added", "updated"]),
        )
        .order_by(Notification.seq.desc())
    )
    return [label_id for label_id in session.scalars(query) if label_id]


def latest_label(notified: list[str], segs: list[str]) -> str:
    """The newest notified SEG the server still has, else the last one it lists."""
    return next((label_id for label_id in notified if label_id in segs), segs[-1])


def dicomweb_items(
    ctx: Any, dataset: DatasetInput, source: DicomWebSource, labels: dict[str, str]
) -> list[dict[str, Any]]:
    items = []
    for image_id in source.image_ids():
        segs = source.labels_of(image_id)
        if not segs:
            continue
        files = dataset_actions.fetch_cached(ctx, dataset_id=dataset.dataset_id, image_id=image_id, source=source)
        seg_uid = latest_label(dataset.notified_labels.get(image_id, []), segs)

        def fetch_label(dest: Path, files: list[Path] = files, seg_uid: str = seg_uid) -> list[Path]:
            volume = read_series([f for f in files if f.suffix == ".dcm"])
            return [source.fetch_label(seg_uid, volume, labels, dest)]

        label = ctx.cache.get_or_fetch(dataset.dataset_id, f"label:{seg_uid}:{labels_key(labels)}", fetch_label)
        items.append({"image": str(files[0]), "label": str(label[0]), "image_id": image_id, "label_id": seg_uid})
    return items
