"""The specs of an annotation job, checked at creation and again by its controller (a stored row may predate a check)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medcloud.bundles.overrides import check_train_specs
from medcloud.errors import Invalid


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(f"Invalid Input. `{name}` must be a positive integer.")
    return value


def check_stop_criteria(value: Any) -> dict[str, Any]:
    """`{"max_rounds": positive int, "key_metric": finite number}`, each optional; unknown keys are left to the caller."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid("Invalid Input. `stop_criteria` must be an object.")
    if value.get("max_rounds") is not None:
        _positive_int(value["max_rounds"], "stop_criteria.max_rounds")
    metric = value.get("key_metric")
    if metric is not None and (
        isinstance(metric, bool) or not isinstance(metric, int | float) or not math.isfinite(metric)
    ):
        raise Invalid("Invalid Input. `stop_criteria.key_metric` must be a finite number.")
    return dict(value)


def check_annotation_specs(specs: Any, *, allow_expressions: bool) -> dict[str, Any]:
    """`round_size`, `stop_criteria` and `train_spec` (each round's train specs); returns the stop criteria."""
    if not isinstance(specs, Mapping):
        raise Invalid("Invalid Input. `specs` must be an object.")
    _positive_int(specs.get("round_size", 1), "round_size")
    criteria = check_stop_criteria(specs.get("stop_criteria"))
    train_spec = specs.get("train_spec")
    if train_spec is not None:
        check_train_specs(train_spec, "specs.train_spec", allow_expressions=allow_expressions)
    return criteria
