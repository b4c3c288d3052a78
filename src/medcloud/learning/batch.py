"""The `batchinfer` job: the experiment's model (or a train job's) over every image of its inference dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medcloud.context import Context
from medcloud.datasets import actions as dataset_actions
from medcloud.datasets import service as datasets
from medcloud.datasets.orm import Dataset
from medcloud.errors import Invalid
from medcloud.experiments.orm import Experiment
from medcloud.experiments.realtime import host_spec, model_input
from medcloud.inference.host import build_predictor
from medcloud.jobs import files
from medcloud.jobs.orm import Job
from medcloud.learning.progress import ProgressReporter

log = logging.getLogger(__name__)


def _weights(ctx: Context, job: Job) -> Path | None:
    train_job_id = job.specs.get("train_job_id")
    if not train_job_id:
        return None
    path = files.job_dir(ctx.settings.data_dir, train_job_id) / "results" / "models" / "model.pt"
    if not path.exists():
        raise Invalid(f"Train job {train_job_id} has no checkpoint to run.")
    return path


def run_batchinfer(ctx: Context, *, job: Job, experiment: Experiment, job_dir: Path) -> dict[str, Any]:
    dataset_id = experiment.inference_dataset or (experiment.train_datasets or [None])[0]
    with ctx.db.session() as session:
        dataset = session.get(Dataset, dataset_id) if dataset_id else None
    if dataset is None:
        raise Invalid("The experiment has no inference_dataset to run on.")
    source: Any = datasets.source_of(dataset, ctx.box)
    image_ids = source.image_ids()
    predictor = build_predictor(vars(host_spec(experiment)))
    predictor.load()
    weights = _weights(ctx, job)
    if weights is not None:
        predictor.swap_weights(weights)
    reporter = ProgressReporter(job_dir, max_epoch=1)
    params = dict(job.specs.get("bundle_params") or {})
    failed: dict[str, str] = {}
    for index, image_id in enumerate(image_ids, start=1):
        try:
            local = dataset_actions.fetch_cached(ctx, dataset_id=dataset.id, image_id=image_id, source=source)
            predictor.predict(model_input(local, image_id), params, job_dir / files.RESULTS / "predictions" / image_id)
        except Exception as exc:  # one unreadable image must not lose the others' results
            log.error("Image %s failed: %s", image_id, exc)
            failed[image_id] = f"{type(exc).__name__}: {exc}"[:500]
        reporter.update(cur_iter=index)
    reporter.update(epoch=1)
    if image_ids and len(failed) == len(image_ids):
        raise Invalid(f"Batch inference failed on every image; first error: {next(iter(failed.values()))}")
    return {"images": len(image_ids) - len(failed), "failed": failed, "epoch": -1, "key_metric": -1}
