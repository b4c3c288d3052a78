"""MLflow for a job whose model code has no network: it logs locally, the trusted worker sends it on.

The model process runs without any network (`sandbox.py`), so a train job that asks for
`"tracking": "mlflow"` gets a `tracking_uri` of an SQLite store inside its own `model/` folder; the
bundle's own MLflow handler (or medcloud's `Tracker`) logs there as usual. At its end the model process
exports its runs as JSON (`tracking.export_runs`). The worker reads that JSON through an fd (a byte cap,
no link followed), checks every field's type, and replays each run — params, every metric's history,
tags, status — into the tracking server the user named. The worker never opens the model's database:
what model code wrote reaches it as JSON only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcloud.jobs import files
from medcloud.jobs.spec import JobSpec
from medcloud.modelrun.tracking import EXPORT, STORE

log = logging.getLogger(__name__)
MAX_EXPORT_BYTES = 64 << 20
MAX_RUNS = 100
BATCH = 900  # MLflow's log_batch takes at most 1000 metrics per call


@dataclass
class MlflowRelay:
    """Where the model's MLflow records go; `target` None: the job asked for no tracking."""

    target: str | None = None

    @classmethod
    def take_over(cls, spec: JobSpec, *, model_dir: Path) -> MlflowRelay:
        """Point the job's MLflow at a store in the model's folder; remember the user's server."""
        if spec.specs.get("tracking") != "mlflow" or not spec.specs.get("tracking_uri"):
            return cls()
        target = str(spec.specs["tracking_uri"])
        spec.specs["tracking_uri"] = f"sqlite:///{model_dir / STORE}"
        return cls(target)

    def replay(self, job_dir: Path) -> int:
        """Send every run the model exported to the user's server; the number of runs sent."""
        if self.target is None:
            return 0
        exported = files.read_json(files.model_dir(job_dir) / EXPORT, MAX_EXPORT_BYTES, root=job_dir)
        if exported is None:
            log.error("The job's MLflow records are missing or unreadable; nothing was sent to MLflow.")
            return 0
        try:
            sent = _replay(_checked_runs(exported), self.target)
        except Exception as exc:  # noqa: BLE001  (model-written records must not fail the job)
            log.error("The job's MLflow records could not be sent to %s: %s", _safe(self.target), exc)
            return 0
        log.info("Sent %d MLflow run(s) to %s", sent, _safe(self.target))
        return sent


def _safe(uri: str) -> str:
    from medcloud.egress import redact_url

    return redact_url(uri)


def _text(value: Any, limit: int = 6000) -> str:
    if not isinstance(value, str):
        raise ValueError("a name or value is not a string")
    return value[:limit]


def _checked_runs(exported: dict[str, Any]) -> list[dict[str, Any]]:
    """The export, each field of the type MLflow takes (ValueError otherwise)."""
    runs = exported.get("runs")
    if not isinstance(runs, list) or len(runs) > MAX_RUNS:
        raise ValueError(f"`runs` is not a list of at most {MAX_RUNS} runs")
    checked = []
    for run in runs:
        if not isinstance(run, dict):
            raise ValueError("a run is not an object")
        metrics = []
        for entry in run.get("metrics") or []:
            if not (isinstance(entry, list) and len(entry) == 4):
                raise ValueError("a metric is not [key, value, timestamp, step]")
            key, value, timestamp, step = entry
            if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in (value, timestamp, step)):
                raise ValueError("a metric's value, timestamp or step is not a number")
            metrics.append((_text(key, 250), float(value), int(timestamp), int(step)))
        checked.append(
            {
                "experiment": _text(run.get("experiment") or "Default", 500),
                "run_name": _text(run.get("run_name") or "run", 250),
                "status": run.get("status") if run.get("status") in ("FINISHED", "FAILED", "KILLED") else "FINISHED",
                "params": {_text(k, 250): _text(v) for k, v in (run.get("params") or {}).items()},
                "tags": {_text(k, 250): _text(v) for k, v in (run.get("tags") or {}).items()},
                "metrics": metrics,
            }
        )
    return checked


def _replay(runs: list[dict[str, Any]], target_uri: str) -> int:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    target = MlflowClient(tracking_uri=target_uri)
    for run in runs:
        existing = target.get_experiment_by_name(run["experiment"])
        experiment_id = existing.experiment_id if existing else target.create_experiment(run["experiment"])
        tags = {k: v for k, v in run["tags"].items() if not k.startswith("mlflow.source")}
        run_id = target.create_run(experiment_id, run_name=run["run_name"], tags=tags).info.run_id
        params = [Param(k, v) for k, v in run["params"].items()]
        for start in range(0, len(params), 100):
            target.log_batch(run_id, params=params[start : start + 100])
        metrics = [Metric(*entry) for entry in run["metrics"]]
        for start in range(0, len(metrics), BATCH):
            target.log_batch(run_id, metrics=metrics[start : start + BATCH])
        target.log_batch(run_id, tags=[RunTag("medcloud.relayed", "true")])
        target.set_terminated(run_id, status=run["status"])
    return len(runs)
