"""Base experiments offered to every user (`GET /experiments:base`), with ids stable across installs."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from medcloud.execution.kinds import EXPERIMENT_ACTIONS
from medcloud.experiments.schemas import ExperimentOut, NetworkArch

VISTA3D_NAME = "MONAI VISTA3d"
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@cache
def vista3d_labels() -> tuple[str, dict[str, str]]:
    """The official bundle's version and its 132 class names (lowercase, no background)."""
    raw = json.loads(resources.files("medcloud.experiments").joinpath("vista3d_labels.json").read_text())
    return raw["version"], raw["labels"]


def stable_id(name: str, version: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"medcloud:base-experiment:{name}:{version}"))


@cache
def base_experiments() -> tuple[ExperimentOut, ...]:
    version, labels = vista3d_labels()
    vista = ExperimentOut(
        id=stable_id(VISTA3D_NAME, version),
        name=VISTA3D_NAME,
        version=version,
        description="VISTA-3D: versatile 3D CT segmentation of 127 classes with class and point prompts.",
        network_arch=NetworkArch.VISTA3D.value,
        base_experiment=[],
        train_datasets=[],
        eval_dataset=None,
        inference_dataset=None,
        realtime_infer=False,
        realtime_infer_support=True,
        realtime_infer_request_timeout=60,
        bundle_url=None,
        workspace=None,
        model_params={"labels": labels},
        actions=list(EXPERIMENT_ACTIONS),
        public=True,
        created_on=_EPOCH,
        last_modified=_EPOCH,
    )
    return (vista,)


def get_base(experiment_id: str) -> ExperimentOut | None:
    return next((b for b in base_experiments() if b.id == experiment_id), None)
