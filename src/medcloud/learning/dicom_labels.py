"""Training items from a DICOMweb dataset: each labeled series as NIfTI, its latest SEG as a label volume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medcloud.context import Context
from medcloud.datasets import actions as dataset_actions
from medcloud.datasets.orm import Dataset, Notification
from medcloud.imaging.series import read_series
from medcloud.sources.dicomweb import DicomWebSource


def _labels_key(labels: dict[str, str]) -> str:
    """Label volumes depend on the experiment's index → name map: cache them per map."""
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:12]


def _latest_label(ctx: Context, dataset_id: str, image_id: str, segs: list[str]) -> str:
    """The SEG named by the latest `notify` for the image, else the last one the server lists."""
    with ctx.db.session() as session:
        query = (
            select(Notification.label_id)
            .where(
                Notification.dataset_id == dataset_id,
                Notification.image_id == image_id,
                Notification.section.in_(["added", "updated"]),
            )
            .order_by(Notification.seq.desc())
        )
        for label_id in session.scalars(query):
            if label_id in segs:
                return label_id
    return segs[-1]


def dicomweb_items(
    ctx: Context, dataset: Dataset, source: DicomWebSource, labels: dict[str, str]
) -> list[dict[str, Any]]:
    items = []
    for image_id in source.image_ids():
        segs = source.labels_of(image_id)
        if not segs:
            continue
        files = dataset_actions.fetch_cached(ctx, dataset_id=dataset.id, image_id=image_id, source=source)
        seg_uid = _latest_label(ctx, dataset.id, image_id, segs)

        def fetch_label(dest: Path, files: list[Path] = files, seg_uid: str = seg_uid) -> list[Path]:
            volume = read_series([f for f in files if f.suffix == ".dcm"])
            return [source.fetch_label(seg_uid, volume, labels, dest)]

        label = ctx.cache.get_or_fetch(dataset.id, f"label:{seg_uid}:{_labels_key(labels)}", fetch_label)
        items.append({"image": str(files[0]), "label": str(label[0]), "image_id": image_id, "label_id": seg_uid})
    return items
