"""`Vista3dFamily`: what the registry knows of VISTA-3D (catalogue row, checks, preparation, predictor, training)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcloud.bundles.configured import ConfiguredBundle, ensure_configured_bundle, experiment_copy
from medcloud.errors import Invalid
from medcloud.families.base import ModelFamily

if TYPE_CHECKING:
    from medcloud.context import Context
    from medcloud.experiments.orm import Experiment
    from medcloud.experiments.schemas import ExperimentCreate, ExperimentOut
    from medcloud.inference.predictors import Predictor
    from medcloud.jobs.spec import JobSpec

NAME = "MONAI VISTA3d"
CONFIGURED = ConfiguredBundle(
    "MEDCLOUD_VISTA3D_BUNDLE", "vista3d_bundle", "vista3d", "a VISTA-3D bundle", "VISTA-3D weights"
)


@cache
def vista3d_labels() -> tuple[str, dict[str, str]]:
    """The official bundle's version and its 132 class names (lowercase, no background)."""
    raw = json.loads(resources.files("medcloud.families.vista3d").joinpath("labels.json").read_text())
    return raw["version"], raw["labels"]


class Vista3dFamily(ModelFamily):
    name = "vista3d"
    archs = ("monai_vista3d",)
    dataset_types = frozenset({"semantic_segmentation"})
    batch_output_ext = ".nii.gz"

    def base_experiments(self) -> list[ExperimentOut]:
        from medcloud.experiments.catalogue import base_experiment

        version, labels = vista3d_labels()
        return [
            base_experiment(
                name=NAME,
                version=version,
                description="VISTA-3D: versatile 3D CT segmentation of 127 classes with class and point prompts.",
                network_arch=self.archs[0],
                ngc_path=f"nvidia/monaihosting/vista3d:{version}",
                labels=labels,
            )
        ]

    def check_create(self, body: ExperimentCreate, *, base_row: Experiment | None, public_base: bool) -> None:
        if not public_base:
            raise Invalid(f'{self.archs[0]} needs base_experiment: the id of "{NAME}" from experiments:base.')

    def check_train(self, experiment: Experiment, specs: dict[str, Any]) -> None:
        from medcloud.families.vista3d.train import EPOCH_KEYS, LR_KEYS, VAL_INTERVAL_KEYS

        for key in (*EPOCH_KEYS, *VAL_INTERVAL_KEYS, "steps_per_epoch"):
            value = specs.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise Invalid(f"specs.{key} must be a positive integer.")
        for key in LR_KEYS:
            value = specs.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise Invalid(f"specs.{key} must be a positive number.")

    def batch_folder(self) -> str:
        version, _labels = vista3d_labels()
        return f"vista3d_segmentation_v{version}/eval"  # where the service's notebooks read them

    def prepare(
        self, ctx: Context, *, body: ExperimentCreate, base_row: Experiment | None, exp_dir: Path
    ) -> tuple[str, dict[str, str]]:
        """The experiment's own copy of the configured VISTA-3D bundle (weights hard-linked until trained)."""
        labels = body.model_params.labels or dict(vista3d_labels()[1])
        if not ctx.settings.vista3d_bundle:
            if not body.realtime_infer:
                return "", labels
            raise CONFIGURED.not_configured(ctx)
        return str(experiment_copy(ensure_configured_bundle(ctx.settings, CONFIGURED), exp_dir)), labels

    def predictor(self, spec: dict[str, Any]) -> Predictor:
        from medcloud.families.vista3d.predictor import Vista3dPredictor

        return Vista3dPredictor(Path(spec["bundle_dir"]), labels=spec.get("labels") or {})

    def train(self, spec: JobSpec, job_dir: Path) -> dict[str, Any]:
        from medcloud.families.vista3d.train import run_vista3d_train

        return run_vista3d_train(spec, job_dir)


FAMILY = Vista3dFamily()
