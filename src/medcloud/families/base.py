"""What a model family is: one unit that lists, checks, prepares, serves and trains one kind of model.

A family handles one or more `network_arch` values (`registry.py` maps each to its family). The API side
(`experiments/`, `learning/actions.py`) asks the family of an experiment to check and prepare it; the
model side (model-host processes, Ray replicas, job model processes) asks it for a predictor and for a
train run. The two sides meet only through plain data (`HostSpec` as a dict, `JobSpec`), so a family's
model-side methods import torch and MONAI lazily and never see the database or the server's settings.

`ModelFamily`'s defaults are the custom-bundle behaviour (a bundle from `bundle_url` or a base
experiment of the caller's, served by its own `configs/inference.json`, trained by its own
`configs/train.json`); a family overrides what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from medcloud.errors import Invalid
from medcloud.paths import child_path

if TYPE_CHECKING:
    from medcloud.context import Context
    from medcloud.experiments.orm import Experiment
    from medcloud.experiments.schemas import ExperimentCreate, ExperimentOut
    from medcloud.inference.predictors import Predictor
    from medcloud.jobs.spec import JobSpec


class ModelFamily:
    """One family of models. Subclasses set `name` and `archs` and override what differs from a custom bundle."""

    name: ClassVar[str]  # the host kind in a HostSpec, e.g. "custom", "vista3d", "deepedit"
    archs: ClassVar[tuple[str, ...]]  # the network_arch values it handles
    dataset_types: ClassVar[frozenset[str] | None] = None  # dataset types it can use; None: any
    batch_output_ext: ClassVar[str | None] = None  # batch inference converts NRRD outputs to this (".nii.gz")

    # ---- catalogue and checks (API side) --------------------------------------------------------------
    def base_experiments(self) -> list[ExperimentOut]:
        """The public base experiments it offers in `GET /experiments:base` (none for custom bundles)."""
        return []

    def check_dataset(self, dataset_id: str, dataset_type: str) -> None:
        """Raise `Invalid` when the family cannot use a dataset of this type."""
        if self.dataset_types is not None and dataset_type not in self.dataset_types:
            wanted = " or ".join(sorted(self.dataset_types))
            raise Invalid(f"Dataset {dataset_id} has type {dataset_type}; {self.archs[0]} needs {wanted}.")

    def check_create(self, body: ExperimentCreate, *, base_row: Experiment | None, public_base: bool) -> None:
        """Raise `Invalid` when the request cannot make an experiment of this family.

        `base_row` is the caller's own base experiment, `public_base` whether a catalogue base was named.
        """
        if not body.bundle_url and base_row is None:
            raise Invalid(f"bundle_url is required for network_arch {body.network_arch} without a base experiment.")

    def check_train(self, experiment: Experiment, specs: dict[str, Any]) -> None:
        """Raise `Invalid` when the experiment cannot run a train job with these specs (after the generic checks)."""
        configs = specs.get("config_file") or "configs/train.json"
        for config in [configs] if isinstance(configs, str) else list(configs):
            bundle = Path(experiment.bundle_dir)
            if not child_path(bundle, *Path(config).parts, what="config_file").is_file():
                raise Invalid(f"The experiment's bundle has no {config} to train with.")

    def check_prompts(self, params: dict[str, Any], labels: dict[str, str]) -> None:
        """Raise `Invalid` for `bundle_params` of a real-time request the model would refuse (fail fast)."""

    def batch_folder(self) -> str:
        """Where a batch inference job's outputs go inside its results folder."""
        return "predictions"

    # ---- preparing the model (API side, blocking: runs in a pool) ------------------------------------
    def prepare(
        self, ctx: Context, *, body: ExperimentCreate, base_row: Experiment | None, exp_dir: Path
    ) -> tuple[str, dict[str, str]]:
        """Put the experiment's bundle in `exp_dir/bundle`; return its folder and the label names by index."""
        import shutil

        from medcloud.bundles.fetch import fetch_bundle
        from medcloud.bundles.validate import check_bundle, labels_from_metadata

        exp_dir.mkdir(parents=True, exist_ok=True)
        bundle_dir = exp_dir / "bundle"
        if body.bundle_url:
            fetch_bundle(body.bundle_url, bundle_dir, ctx.settings, sha256=body.bundle_sha256)
        else:
            assert base_row is not None
            shutil.copytree(base_row.bundle_dir, bundle_dir, symlinks=False)
        meta = check_bundle(bundle_dir, realtime=body.realtime_infer)
        labels = body.model_params.labels or labels_from_metadata(meta)
        return str(bundle_dir), labels

    # ---- the model (model-host and job processes) ----------------------------------------------------
    def predictor(self, spec: dict[str, Any]) -> Predictor:
        """The predictor for a host spec (a `HostSpec` as a dict)."""
        from medcloud.bundles.overrides import expressions_allowed
        from medcloud.inference.predictors import BundlePredictor

        return BundlePredictor(
            Path(spec["bundle_dir"]),
            spec.get("overrides") or {},
            spec.get("image_key", "image"),
            allow_expressions=expressions_allowed(spec),
        )

    def train(self, spec: JobSpec, job_dir: Path) -> dict[str, Any]:
        """Run a train job in its model process; return the job's result."""
        from medcloud.modelrun.train import run_bundle_train

        return run_bundle_train(spec, job_dir)
