"""MLflow tracking for training loops medcloud runs itself (bundles use MONAI's own MLflow handlers), and
the export of a job's runs as JSON for the worker to send on (the model process has no network:
`tracking_relay.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STORE = "mlruns.db"  # in the model's own folder
EXPORT = "mlflow-runs.json"


def export_runs(tracking_uri: str, path: Path) -> int:
    """Every run in the local store `tracking_uri`, as JSON at `path`; the number of runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=100):
            metrics = [
                [key, m.value, m.timestamp, m.step]
                for key in run.data.metrics
                for m in client.get_metric_history(run.info.run_id, key)
            ]
            runs.append(
                {
                    "experiment": experiment.name,
                    "run_name": run.info.run_name,
                    "status": run.info.status,
                    "params": dict(run.data.params),
                    "tags": dict(run.data.tags),
                    "metrics": metrics,
                }
            )
    path.write_text(json.dumps({"runs": runs}))
    return len(runs)


class Tracker:
    """Logs params once and metrics per epoch to MLflow, or does nothing when tracking is off."""

    def __init__(self, run: Any = None) -> None:
        self._run = run

    @classmethod
    def from_specs(cls, specs: dict[str, Any], *, run_name: str) -> Tracker:
        if specs.get("tracking") != "mlflow":
            return cls()
        import mlflow

        if specs.get("tracking_uri"):
            mlflow.set_tracking_uri(specs["tracking_uri"])
        mlflow.set_experiment(specs.get("experiment_name") or "monai_experiment")
        run = mlflow.start_run(run_name=specs.get("run_name") or run_name)
        mlflow.log_params({k: v for k, v in specs.items() if k not in ("tracking_uri",) and not isinstance(v, dict)})
        return cls(run)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._run is not None:
            import mlflow

            mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        if self._run is not None:
            import mlflow

            mlflow.end_run()
