"""Data lists for training: every labeled image of a dataset as local `{"image", "label"}` files.

Runs in the job's worker, from the ticket's `DatasetInput` (the dataset's address and its own
credentials); `ctx` is anything with an image `cache` (the worker's `WorkerContext`, or the server's).
"""

from __future__ import annotations

from typing import Any

from medcloud.config import Settings
from medcloud.datasets import actions as dataset_actions
from medcloud.errors import Invalid
from medcloud.jobs.ticket import DatasetInput
from medcloud.sources import kinds
from medcloud.sources.base import DataSource
from medcloud.sources.limits import SourceLimits
from medcloud.sources.objectstore import ObjectStoreSource


def open_input(dataset: DatasetInput, settings: Settings | None = None) -> DataSource:
    """Connect to the dataset the ticket names (blocking), with the caps of `settings` (voxels, WADO bytes)."""
    address = kinds.SourceAddress(
        kind=dataset.source_kind or kinds.kind_for_new(dataset.client_url, dataset.filters),
        client_url=dataset.client_url,
        client_id=dataset.client_id,
        client_secret=dataset.client_secret,
        filters=dataset.filters,
    )
    limits = SourceLimits.from_settings(settings) if settings is not None else None
    return kinds.open_source(address, verify=False, cache_key=dataset.dataset_id, limits=limits)


def _objectstore_items(ctx: Any, dataset: DatasetInput, source: ObjectStoreSource) -> list[dict[str, Any]]:
    items = []
    for image in source.images():
        if image.label_id is None:
            continue
        files = dataset_actions.fetch_cached(ctx, dataset_id=dataset.dataset_id, image_id=image.id, source=source)
        label = ctx.cache.get_or_fetch(
            dataset.dataset_id, f"label:{image.label_id}", lambda dest, i=image.id: source.fetch_label(i, dest)
        )
        items.append({"image": str(files[0]), "label": str(label[0]), "image_id": image.id, "label_id": image.label_id})
    return items


def labeled_items(ctx: Any, dataset: DatasetInput, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Fetch (through the cache) each labeled image and its label; labels become volumes on the image grid."""
    source = open_input(dataset, getattr(ctx, "settings", None))
    if isinstance(source, ObjectStoreSource):
        return _objectstore_items(ctx, dataset, source)
    from medcloud.learning.dicom_labels import dicomweb_items

    return dicomweb_items(ctx, dataset, source, labels)  # type: ignore[arg-type]


def train_and_validation(
    ctx: Any, *, train: DatasetInput, validation: DatasetInput | None, labels: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train_items = labeled_items(ctx, train, labels)
    if not train_items:
        raise Invalid(f"Dataset {train.dataset_id} has no labeled images to train on.")
    val_items = labeled_items(ctx, validation, labels) if validation is not None else []
    return train_items, val_items
