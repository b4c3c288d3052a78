"""MLflow tracking for training loops medcloud runs itself (bundles use MONAI's own MLflow handlers)."""

from __future__ import annotations

from typing import Any


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
