"""Data lists for training: every labeled image of a dataset as local `{"image", "label"}` files."""

from __future__ import annotations

from typing import Any

from medcloud.context import Context
from medcloud.datasets import actions as dataset_actions
from medcloud.datasets import service as datasets
from medcloud.datasets.orm import Dataset
from medcloud.errors import Invalid
from medcloud.sources.objectstore import ObjectStoreSource


def _objectstore_items(ctx: Context, dataset: Dataset, source: ObjectStoreSource) -> list[dict[str, Any]]:
    items = []
    for image in source.images():
        if image.label_id is None:
            continue
        files = dataset_actions.fetch_cached(ctx, dataset_id=dataset.id, image_id=image.id, source=source)
        label = ctx.cache.get_or_fetch(
            dataset.id, f"label:{image.label_id}", lambda dest, i=image.id: source.fetch_label(i, dest)
        )
        items.append({"image": str(files[0]), "label": str(label[0]), "image_id": image.id, "label_id": image.label_id})
    return items


def labeled_items(ctx: Context, dataset: Dataset, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Fetch (through the cache) each labeled image and its label; labels become volumes on the image grid."""
    source = datasets.source_of(dataset, ctx.box)
    if isinstance(source, ObjectStoreSource):
        return _objectstore_items(ctx, dataset, source)
    from medcloud.learning.dicom_labels import dicomweb_items

    return dicomweb_items(ctx, dataset, source, labels)


def train_and_validation(
    ctx: Context, *, train: Dataset, validation: Dataset | None, labels: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train_items = labeled_items(ctx, train, labels)
    if not train_items:
        raise Invalid(f"Dataset {train.id} has no labeled images to train on.")
    val_items = labeled_items(ctx, validation, labels) if validation is not None else []
    return train_items, val_items
