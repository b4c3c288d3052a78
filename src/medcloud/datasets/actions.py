"""The synchronous dataset actions: `nextimage`, `cacheimage` (API.md §3.1–3.2)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medcloud.context import Context
from medcloud.datasets import service
from medcloud.datasets.orm import Dataset
from medcloud.datasets.schemas import CacheImageSpecs
from medcloud.errors import Invalid, NotFound
from medcloud.imaging import voxels
from medcloud.sources.base import DataSource

log = logging.getLogger(__name__)


def fetch_cached(
    ctx: Context,
    *,
    dataset_id: str,
    image_id: str,
    source: DataSource | None = None,
    opener: Callable[[], DataSource] | None = None,
    ttl_s: int | None = None,
) -> list[Path]:
    """Local files of the image: from the cache, else fetched once through `source` (blocking).

    `opener` instead of `source`: the source is opened (and may check the image id) only on a miss. The cache
    is looked up once. It is shared by every user and keyed by ids clients send: `dataset_id` must be one
    whose ownership the caller has already checked (as the dataset actions and `realtime.resolve_image` do).
    A volume over `MEDCLOUD_MAX_VOXELS` (read from its headers) is refused before it enters the cache.
    """
    if source is None and opener is None:
        hit = ctx.cache.lookup(dataset_id, image_id)
        if hit is None:
            raise Invalid(f"Image {image_id} is not cached and its dataset cannot be read.")
        return hit

    def fetch(dest: Path) -> list[Path]:
        opened = source if source is not None else opener()  # type: ignore[misc]
        files = opened.fetch(image_id, dest)
        voxels.check_files(files, ctx.settings.max_voxels, what=f"Image {image_id}")
        return files

    return ctx.cache.get_or_fetch(dataset_id, image_id, fetch, ttl_s=ttl_s)


def start_caching(ctx: Context, *, dataset_id: str, image_id: str, source: DataSource, ttl_s: int | None) -> Future:
    """Fetch in the background; failures are logged (the next inference will report them)."""

    def run() -> list[Path]:
        try:
            return fetch_cached(ctx, dataset_id=dataset_id, image_id=image_id, source=source, ttl_s=ttl_s)
        except Exception:
            log.exception("Caching image %s of dataset %s failed", image_id, dataset_id)
            raise

    return ctx.background.submit(run)


def _cache_specs(specs: dict[str, Any], max_ttl: int) -> CacheImageSpecs:
    if "image" not in specs:
        raise Invalid("Invalid Input. Spec is missing `image`")
    try:
        parsed = CacheImageSpecs.model_validate(specs)
    except ValidationError:
        raise Invalid(
            "Invalid Input. `image` must be a non-empty string and `ttl` an integer number of seconds."
        ) from None
    if parsed.ttl is not None and parsed.ttl <= 0:
        raise Invalid("Invalid Input. `ttl` must be a positive number of seconds.")
    ttl = min(parsed.ttl or max_ttl, max_ttl)
    return parsed.model_copy(update={"ttl": ttl})


def cacheimage(ctx: Context, *, row: Dataset, specs: dict[str, Any]) -> dict:
    """Check the image exists, then fetch it in the background; `{}` at once."""
    parsed = _cache_specs(specs, ctx.settings.image_cache_max_ttl_s)
    if ctx.cache.lookup(row.id, parsed.image, ttl_s=parsed.ttl) is not None:
        return {}
    source = service.source_of(row, ctx.box, settings=ctx.settings)
    source.check_image(parsed.image)
    start_caching(ctx, dataset_id=row.id, image_id=parsed.image, source=source, ttl_s=parsed.ttl)
    return {}


def nextimage(ctx: Context, *, row: Dataset, pick: Any) -> dict:
    """An unlabeled image, least recently served first, and start caching it.

    `pick(candidates) -> image_id | None` records the choice in the database (the caller's session).
    """
    source = service.source_of(row, ctx.box, settings=ctx.settings)
    candidates = source.unlabeled_ids()
    image_id = pick(candidates)
    if image_id is None:
        raise NotFound("No Unlabeled Images Found")
    start_caching(ctx, dataset_id=row.id, image_id=image_id, source=source, ttl_s=None)
    # `unlabeled` is our addition (the viewer shows it); clients that read only image and meta ignore it.
    return {"image": image_id, "meta": source.meta(image_id), "unlabeled": len(candidates)}


NOTIFY_SECTIONS = ("added", "updated", "removed")


def _notify_entries(specs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """`(section, image, label)` of every entry, or Invalid naming the first problem."""
    unknown = sorted(set(specs) - set(NOTIFY_SECTIONS))
    if unknown:
        raise Invalid(f"Invalid Input. Unknown notify section(s) {', '.join(unknown)}; use added, updated or removed.")
    if not any(specs.get(s) for s in NOTIFY_SECTIONS):
        raise Invalid("Invalid Input. notify needs at least one of added, updated or removed.")
    entries = []
    for section in NOTIFY_SECTIONS:
        items = specs.get(section) or []
        for item in items if isinstance(items, list) else [items]:
            if not isinstance(item, dict) or not all(
                isinstance(item.get(k), str) and item[k] for k in ("image", "label")
            ):
                raise Invalid(f"Invalid Input. Each entry of `{section}` needs string `image` and `label` ids.")
            entries.append((section, item["image"], item["label"]))
    return entries


def notify(ctx: Context, *, session: Any, row: Dataset, specs: dict[str, Any]) -> dict:
    """Record label changes durably (one row each) in the caller's transaction."""
    from medcloud.datasets.orm import Notification

    for section, image_id, label_id in _notify_entries(specs):
        session.add(Notification(dataset_id=row.id, section=section, image_id=image_id, label_id=label_id))
    session.flush()
    return {}
