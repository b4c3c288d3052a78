"""`DeepEditFamily`: what the registry knows of DeepEdit (`monai_annotation`).

The model is a bundle in the layout of the model zoo's `spleen_deepedit_annotation`: the operator's
(`MEDCLOUD_DEEPEDIT_BUNDLE`) for experiments on the public base experiment, or the client's own by
`bundle_url`. It is served by its own `configs/inference.json` with clicks as the bundle defines them
(`{"spleen": [[i, j, k], ...], "background": [...]}`, voxel indices of the image; none = automatic
segmentation) and trained by its own `configs/train.json` (DeepEdit's simulated clicks), starting
from the experiment's current weights.
"""

from __future__ import annotations

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

NAME = "MONAI Annotation (DeepEdit)"
VERSION = "0.5.6"  # the model zoo's spleen_deepedit_annotation this family follows
LABELS = {"1": "spleen"}
CONFIGURED = ConfiguredBundle(
    "MEDCLOUD_DEEPEDIT_BUNDLE", "deepedit_bundle", "deepedit", "a DeepEdit bundle", "DeepEdit weights"
)


def label_names(labels: dict[str, str]) -> dict[str, int]:
    """The bundle's `label_names` from the experiment's labels: each name by index, and background 0."""
    return {**{name: int(index) for index, name in labels.items()}, "background": 0}


def labels_of_bundle(bundle: Path) -> dict[str, str]:
    """`label_names` of the bundle's inference config as experiment labels (index → name, no background)."""
    from medcloud.bundles.validate import read_config

    names = read_config(bundle / "configs" / "inference.json").get("label_names")
    if not isinstance(names, dict) or not names:
        raise Invalid("The bundle is not a DeepEdit bundle: configs/inference.json has no label_names.")
    labels = {}
    for name, index in names.items():
        if not isinstance(index, int) or not 0 <= index < 256:
            raise Invalid(f"The bundle's label_names give {name!r} the index {index!r}; indices are 0 to 255.")
        if index:
            labels[str(index)] = str(name)
    return labels


class DeepEditFamily(ModelFamily):
    name = "deepedit"
    archs = ("monai_annotation",)
    dataset_types = frozenset({"semantic_segmentation"})
    batch_output_ext = ".nii.gz"

    def base_experiments(self) -> list[ExperimentOut]:
        from medcloud.experiments.catalogue import base_experiment

        return [
            base_experiment(
                name=NAME,
                version=VERSION,
                description="DeepEdit: automatic and interactive (click) segmentation of the spleen in CT.",
                network_arch=self.archs[0],
                ngc_path=f"nvidia/monaihosting/spleen_deepedit_annotation:{VERSION}",
                labels=dict(LABELS),
            )
        ]

    def check_create(self, body: ExperimentCreate, *, base_row: Experiment | None, public_base: bool) -> None:
        if not (public_base or base_row is not None or body.bundle_url):
            raise Invalid(
                f'{self.archs[0]} needs base_experiment (the id of "{NAME}" from experiments:base or one of '
                "your experiments) or a bundle_url of a DeepEdit bundle."
            )

    def check_prompts(self, params: dict[str, Any], labels: dict[str, str]) -> None:
        from medcloud.families.deepedit.prompts import parse_clicks

        parse_clicks(params, label_names(labels), None)

    def prepare(
        self, ctx: Context, *, body: ExperimentCreate, base_row: Experiment | None, exp_dir: Path
    ) -> tuple[str, dict[str, str]]:
        if body.bundle_url or base_row is not None:
            bundle_dir, _labels = super().prepare(ctx, body=body, base_row=base_row, exp_dir=exp_dir)
            return bundle_dir, body.model_params.labels or labels_of_bundle(Path(bundle_dir))
        if not ctx.settings.deepedit_bundle:
            if not body.realtime_infer:
                return "", body.model_params.labels or dict(LABELS)
            raise CONFIGURED.not_configured(ctx)
        own = experiment_copy(ensure_configured_bundle(ctx.settings, CONFIGURED), exp_dir)
        return str(own), body.model_params.labels or labels_of_bundle(own)

    def predictor(self, spec: dict[str, Any]) -> Predictor:
        from medcloud.bundles.overrides import expressions_allowed
        from medcloud.families.deepedit.predictor import DeepEditPredictor

        return DeepEditPredictor(
            Path(spec["bundle_dir"]),
            label_names(spec.get("labels") or dict(LABELS)),
            spec.get("overrides") or {},
            allow_expressions=expressions_allowed(spec),
        )

    def train(self, spec: JobSpec, job_dir: Path) -> dict[str, Any]:
        from medcloud.modelrun.train import run_bundle_train

        # DeepEdit learns from where the experiment is now (the base's weights, or the last round's).
        spec.specs.setdefault("finetune", True)
        return run_bundle_train(spec, job_dir)


FAMILY = DeepEditFamily()
