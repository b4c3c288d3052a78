"""The trusted half of a job: gather what its model process needs into the job folder, as a `JobSpec`.

Runs in the worker (medcloud's code only, with the database and the stored credentials): it resolves
data lists and images through the image cache, links them into `<job>/inputs/` (so the cache may evict
its copies mid-run without harm, finding 14), and hands the folder to the experiment's sandbox identity.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from medcloud.context import Context
from medcloud.datasets import actions as dataset_actions
from medcloud.datasets import service as datasets
from medcloud.datasets.orm import Dataset
from medcloud.errors import Invalid
from medcloud.experiments.orm import Experiment
from medcloud.experiments.realtime import host_spec
from medcloud.jobs import files
from medcloud.jobs.orm import Job
from medcloud.jobs.spec import JobSpec
from medcloud.learning.datalist import train_and_validation

log = logging.getLogger(__name__)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def folder_name(image_id: str) -> str:
    """A file-system name for an image id: the id itself when harmless, else a digest of it."""
    if SAFE_NAME.fullmatch(image_id) and ".." not in image_id:
        return image_id
    return "id-" + hashlib.sha256(image_id.encode()).hexdigest()[:24]


class Stager:
    """Links server files into one job's `inputs/` folder under stable, harmless names."""

    def __init__(self, ctx: Context, job: Job, experiment: Experiment, job_dir: Path) -> None:
        self.ctx, self.experiment_id = ctx, experiment.id
        self.inputs = job_dir / "inputs"

    def link(self, path: str | Path, *parts: str) -> str:
        source = Path(path)
        target = self.inputs.joinpath(*parts) / source.name
        return str(self.ctx.sandbox.stage(source, target, experiment_id=self.experiment_id))

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


def _train_items(ctx: Context, experiment: Experiment) -> tuple[list[dict], list[dict]]:
    labels = (experiment.model_params or {}).get("labels") or {}
    with ctx.db.session() as session:
        train = session.get(Dataset, experiment.train_datasets[0]) if experiment.train_datasets else None
        validation = session.get(Dataset, experiment.eval_dataset) if experiment.eval_dataset else None
    if train is None:
        raise Invalid("The experiment's train dataset is gone.")
    return train_and_validation(ctx, train=train, validation=validation, labels=labels)


def _batch_images(ctx: Context, experiment: Experiment, stager: Stager) -> tuple[list[dict], dict[str, str]]:
    dataset_id = experiment.inference_dataset or (experiment.train_datasets or [None])[0]
    with ctx.db.session() as session:
        dataset = session.get(Dataset, dataset_id) if dataset_id else None
    if dataset is None:
        raise Invalid("The experiment has no inference_dataset to run on.")
    source: Any = datasets.source_of(dataset, ctx.box)
    images, failed = [], {}
    for image_id in source.image_ids():
        name = folder_name(image_id)
        try:
            local = dataset_actions.fetch_cached(ctx, dataset_id=dataset.id, image_id=image_id, source=source)
        except Exception as exc:  # one unreadable image must not lose the others' results
            log.error("Image %s could not be fetched: %s", image_id, exc)
            failed[image_id] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        common = Path(os.path.commonpath([str(p.parent) for p in local]))
        for path in local:
            stager.link(path, "images", name, *path.parent.relative_to(common).parts)
        images.append({"id": image_id, "dir": name, "path": str(stager.inputs / "images" / name)})
    return images, failed


def _weights(ctx: Context, job: Job, stager: Stager) -> str | None:
    train_job_id = job.specs.get("train_job_id")
    if not train_job_id:
        return None
    with ctx.db.session() as session:
        train = session.get(Job, str(train_job_id))
        same_experiment = train is not None and train.experiment_id == job.experiment_id
    path = files.job_dir(ctx.settings.data_dir, str(train_job_id)) / "results" / "models" / "model.pt"
    if not same_experiment or not path.exists():
        raise Invalid(f"Train job {train_job_id} has no checkpoint to run.")
    return stager.link(path, "weights")


def stage_job(ctx: Context, *, job: Job, experiment: Experiment, job_dir: Path) -> JobSpec:
    """Fetch and link the job's inputs and describe them; the job folder then belongs to the sandbox."""
    started = time.perf_counter()
    stager = Stager(ctx, job, experiment, job_dir)
    spec = JobSpec(
        job_id=job.id,
        action=job.action,
        experiment_id=experiment.id,
        network_arch=experiment.network_arch,
        bundle_dir=experiment.bundle_dir,
        specs=dict(job.specs),
        labels=(experiment.model_params or {}).get("labels") or {},
        host=vars(host_spec(experiment, ctx.settings)),
    )
    if job.action == "train":
        train_items, val_items = _train_items(ctx, experiment)
        spec.train_items, spec.val_items = stager.items(train_items, "train"), stager.items(val_items, "validation")
        log.info(
            "Data lists ready in %.1f s: %d training, %d validation images",
            time.perf_counter() - started,
            len(train_items),
            len(val_items),
        )
    elif job.action == "batchinfer":
        spec.images, spec.failed = _batch_images(ctx, experiment, stager)
        spec.weights = _weights(ctx, job, stager)
        log.info(
            "%d images ready in %.1f s (%d could not be fetched)",
            len(spec.images),
            time.perf_counter() - started,
            len(spec.failed),
        )
    else:
        raise Invalid(f"unknown job action {job.action!r}")
    return spec
