"""The `train` job: a custom bundle's own `configs/train.json` run through MONAI's ConfigWorkflow.

Server-consumed spec keys are taken out; everything else is a bundle override. The data lists are
the experiment's labeled images, checkpoints and the resolved config go to the job's results folder,
and per-epoch progress goes to `progress.json` for the runner.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from medcloud.bundles.overrides import check_train_specs, expressions_allowed
from medcloud.jobs.spec import JobSpec
from medcloud.modelrun.progress import ProgressReporter

log = logging.getLogger(__name__)
SERVER_KEYS = frozenset(
    {
        "config_file",
        "logging_file",
        "meta_file",
        "tracking",
        "num_gpu",
        "tracking_uri",
        "experiment_name",
        "run_name",
        "save_execute_config",
        "finetune",
        "val_at_start",
    }
)


def load_state_dict(path: Path) -> dict[str, Any]:
    """A plain state dict from a checkpoint saved either bare or as `{"model": ...}` (ignite's savers)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state


def _expr(path: Path) -> str:
    """A path as a config expression (a plain string breaks MONAI's MLflow config artifact)."""
    return "$" + repr(str(path))


def bundle_overrides(
    specs: dict[str, Any], *, bundle: Path, results: Path, job_id: str, train_items: list[dict], val_items: list[dict]
) -> dict[str, Any]:
    overrides = {k: v for k, v in specs.items() if k not in SERVER_KEYS}
    overrides.update(
        {
            "bundle_root": str(bundle),
            "ckpt_dir": _expr(results / "models"),
            "output_dir": _expr(results / "eval"),
            "train#dataset#data": [{"image": i["image"], "label": i["label"]} for i in train_items],
            "validate#dataset#data": [{"image": i["image"], "label": i["label"]} for i in val_items],
        }
    )
    if specs.get("tracking") == "mlflow":
        overrides["run_name"] = specs.get("run_name") or job_id
        for key in ("tracking_uri", "experiment_name", "save_execute_config"):
            if key in specs:
                overrides[key] = specs[key]
    return overrides


def _workflow(specs: dict[str, Any], bundle: Path, overrides: dict[str, Any]) -> ConfigWorkflow:
    configs = specs.get("config_file") or "configs/train.json"
    configs = [str(bundle / c) for c in ([configs] if isinstance(configs, str) else configs)]
    logging_conf = bundle / (specs.get("logging_file") or "configs/logging.conf")
    return ConfigWorkflow(
        config_file=configs,
        meta_file=str(bundle / (specs.get("meta_file") or "configs/metadata.json")),
        logging_file=str(logging_conf) if logging_conf.exists() else False,
        tracking="mlflow" if specs.get("tracking") == "mlflow" else None,
        workflow_type="train",
        **overrides,
    )


def _attach_progress(trainer: Any, evaluator: Any, reporter: ProgressReporter) -> None:
    def report(engine: Any) -> None:
        best = getattr(evaluator.state, "best_metric", None) if evaluator is not None else None
        reporter.update(
            epoch=engine.state.epoch,
            cur_iter=engine.state.iteration,
            key_metric=None if best is None or best == -1 else float(best),
        )

    trainer.add_event_handler(Events.EPOCH_COMPLETED, report)


def run_bundle_train(spec: JobSpec, job_dir: Path) -> dict[str, Any]:
    specs, bundle, results = dict(spec.specs), Path(spec.bundle_dir), job_dir / "results"
    train_items, val_items = spec.train_items, spec.val_items
    overrides = bundle_overrides(
        specs, bundle=bundle, results=results, job_id=spec.job_id, train_items=train_items, val_items=val_items
    )
    started = time.perf_counter()
    if (bundle / "scripts").is_dir():
        # The bundle's own code (`$scripts.score_function`, `scripts.transforms...`), as `monai.bundle run`
        # finds it when started from the bundle's folder.
        sys.path.insert(0, str(bundle))
    workflow = _workflow(specs, bundle, overrides)
    workflow.initialize()
    log.info("Bundle workflow initialised in %.1f s", time.perf_counter() - started)
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator") if val_items and "validate" in parser else None
    if specs.get("finetune") and (bundle / "models" / "model.pt").exists():
        parser.get_parsed_content("network").load_state_dict(load_state_dict(bundle / "models" / "model.pt"))
    _attach_progress(trainer, evaluator, ProgressReporter(job_dir, trainer.state.max_epochs))
    start_metric = None
    if specs.get("val_at_start") and evaluator is not None:
        evaluator.run(global_epoch=0)
        start_metric = float(evaluator.state.best_metric)
    workflow.run()
    workflow.finalize()
    (results / "configs").mkdir(parents=True, exist_ok=True)
    parser.export_config_file(parser.get(), str(results / "configs" / "train_resolved.json"))
    (results / "configs" / "datalist.json").write_text(json.dumps({"training": train_items, "validation": val_items}))
    best = getattr(evaluator.state, "best_metric", -1) if evaluator is not None else -1
    best_epoch = getattr(evaluator.state, "best_metric_epoch", -1) if evaluator is not None else -1
    result = {
        "epoch": int(best_epoch),
        "key_metric": float(best),
        "max_epoch": int(trainer.state.max_epochs),
        "checkpoint": "results/models/model.pt",
    }
    if start_metric is not None:
        result["start_key_metric"] = start_metric
    return result


def run_train(spec: JobSpec, job_dir: Path) -> dict[str, Any]:
    # The API refused hostile specs before storing the job; a job stored earlier is refused here, before any
    # of them reaches ConfigWorkflow (keys the server owns, expressions unless the operator allows them).
    check_train_specs(spec.specs, "specs", allow_expressions=expressions_allowed(spec.host))
    from medcloud.families.registry import family_of

    return family_of(spec.network_arch).train(spec, job_dir)
