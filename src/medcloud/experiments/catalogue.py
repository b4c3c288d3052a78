"""Base experiments offered to every user (`GET /experiments:base`), with ids stable across installs.

Each model family lists its own (`families/*/family.py` `base_experiments`); this module gathers them
and gives them one shape.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache

from medcloud.execution.kinds import EXPERIMENT_ACTIONS
from medcloud.experiments.schemas import ExperimentOut

_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def stable_id(name: str, version: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"medcloud:base-experiment:{name}:{version}"))


def base_experiment(
    *, name: str, version: str, description: str, network_arch: str, ngc_path: str, labels: dict[str, str]
) -> ExperimentOut:
    """A public base experiment with the fields the service's notebooks read (`ngc_path`, `version`, ...)."""
    return ExperimentOut(
        id=stable_id(name, version),
        name=name,
        version=version,
        ngc_path=ngc_path,
        description=description,
        network_arch=network_arch,
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


@cache
def base_experiments() -> tuple[ExperimentOut, ...]:
    from medcloud.families.registry import families

    return tuple(b for family in families() for b in family.base_experiments())


def get_base(experiment_id: str) -> ExperimentOut | None:
    return next((b for b in base_experiments() if b.id == experiment_id), None)
