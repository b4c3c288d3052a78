"""The worker's half of a job: gather what its model process needs into the job folder, as a `JobSpec`.

Runs in the worker, from the ticket alone (no database): it reads the datasets the ticket names with
their own credentials, fetches images through the worker's image cache, links them into
`<job>/inputs/` (so the cache may evict its copies mid-run without harm, finding 14), which model code
sees read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcloud.config import Settings
from medcloud.datasets import actions as dataset_actions
from medcloud.errors import Invalid
from medcloud.jobs import files
from medcloud.jobs.spec import JobSpec
from medcloud.jobs.ticket import JobTicket
from medcloud.sandbox import Sandbox, sandbox_for
from medcloud.sources.cache import ImageCache
from medcloud.worker.datalist import open_input, train_and_validation

log = logging.getLogger(__name__)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class WorkerContext:
    """What a worker has instead of the server's `Context`: its settings, an image cache, the sandbox."""

    settings: Settings
    cache: ImageCache

    @property
    def sandbox(self) -> Sandbox:
        return sandbox_for(self.settings)

    @classmethod
    def from_ticket(cls, ticket: JobTicket, job_dir: Path) -> WorkerContext:
        # data_dir: the folder holding `jobs/` (the server's data folder, or the Ray shared folder); the
        # worker opens only its job folder and the image cache in it, never the database or the master key.
        settings = Settings(data_dir=job_dir.parent.parent, **ticket.settings)
        cache_dir = Path(ticket.cache_dir) if ticket.cache_dir else job_dir.parent.parent / "cache"
        return cls(settings=settings, cache=ImageCache(cache_dir))


def folder_name(image_id: str) -> str:
    """A file-system name for an image id: the id itself when harmless, else a digest of it."""
    if SAFE_NAME.fullmatch(image_id) and ".." not in image_id:
        return image_id
    return "id-" + hashlib.sha256(image_id.encode()).hexdigest()[:24]


class Stager:
    """Links fetched files into one job's `inputs/` folder under stable, harmless names."""

    def __init__(self, ctx: WorkerContext, experiment_id: str, job_dir: Path) -> None:
        self.ctx, self.experiment_id = ctx, experiment_id
        self.inputs = job_dir / files.INPUTS

    def link(self, path: str | Path, *parts: str) -> str:
        source = Path(path)
        target = self.inputs.joinpath(*parts) / source.name
        return str(self.ctx.sandbox.stage(source, target))

    def items(self, items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        out = []
        for index, item in enumerate(items):
            where = (kind, f"{index:05d}")
            out.append(
                {
                    **item,
                    "image": self.link(item["image"], *where, "image"),
                    "label": self.link(item["label"], *where, "label"),
                }
            )
        return out


def _batch_images(ctx: WorkerContext, ticket: JobTicket, stager: Stager) -> tuple[list[dict], dict[str, str]]:
    assert ticket.inference is not None
    dataset_id = ticket.inference.dataset_id
    source = open_input(ticket.inference, ctx.settings)
    images, failed = [], {}
    for image_id in source.image_ids():
        name = folder_name(image_id)
        try:
            local = dataset_actions.fetch_cached(ctx, dataset_id=dataset_id, image_id=image_id, source=source)
        except Exception as exc:  # one unreadable image must not lose the others' results
            log.error("Image %s could not be fetched: %s", image_id, exc)
            failed[image_id] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        common = Path(os.path.commonpath([str(p.parent) for p in local]))
        for path in local:
            stager.link(path, "images", name, *path.parent.relative_to(common).parts)
        images.append({"id": image_id, "dir": name, "path": str(stager.inputs / "images" / name)})
    return images, failed


def stage_job(ctx: WorkerContext, ticket: JobTicket, job_dir: Path) -> JobSpec:
    """Fetch and link the job's inputs and describe them (model code sees them read-only)."""
    started = time.perf_counter()
    # Model code reads the bundle, read-only (on Ray: the copy published in the shared folder).
    ctx.sandbox.make_readable(Path(ticket.bundle_dir))
    stager = Stager(ctx, ticket.experiment_id, job_dir)
    spec = JobSpec(
        job_id=ticket.job_id,
        action=ticket.action,
        experiment_id=ticket.experiment_id,
        network_arch=ticket.network_arch,
        bundle_dir=ticket.bundle_dir,
        specs=dict(ticket.specs),
        labels=dict(ticket.labels),
        host=dict(ticket.host),
    )
    if ticket.action == "train":
        if ticket.train is None:
            raise Invalid("The job names no train dataset.")
        train_items, val_items = train_and_validation(
            ctx, train=ticket.train, validation=ticket.validation, labels=ticket.labels
        )
        spec.train_items, spec.val_items = stager.items(train_items, "train"), stager.items(val_items, "validation")
        log.info(
            "Data lists ready in %.1f s: %d training, %d validation images",
            time.perf_counter() - started,
            len(train_items),
            len(val_items),
        )
    elif ticket.action == "batchinfer":
        spec.images, spec.failed = _batch_images(ctx, ticket, stager)
        if ticket.weights:
            spec.weights = stager.link(ticket.weights, "weights")
        log.info(
            "%d images ready in %.1f s (%d could not be fetched)",
            len(spec.images),
            time.perf_counter() - started,
            len(spec.failed),
        )
    else:
        raise Invalid(f"unknown job action {ticket.action!r}")
    return spec
