"""DeepEdit clicks as the bundle defines them: `{"<label name>": [[i, j, k], ...]}`, checked before they reach a model.

A DeepEdit bundle takes its clicks as keys of the data item, one key per name of its `label_names`
(`{"spleen": [[i, j, k]], "background": [[i, j, k]]}`), each point voxel indices in the image's own
order (the order its file stores, as `LoadImaged` returns it; the bundle's
`OrientationGuidanceMultipleLabelDeepEditd` moves them to RAS). No clicks at all is automatic
segmentation. Pure: no torch, no files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medcloud.errors import Invalid

__all__ = ["MAX_POINTS_PER_LABEL", "parse_clicks"]

MAX_POINTS_PER_LABEL = 64


def _names(label_names: Mapping[str, int]) -> str:
    return ", ".join(f'"{name}"' for name in label_names)


def _point(value: Any, where: str, shape: tuple[int, int, int] | None) -> list[int]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise Invalid(f"Invalid Input. {where} must be a list of 3 integers [i, j, k] (voxel indices), got {value!r}.")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise Invalid(f"Invalid Input. {where} must hold 3 integers (voxel indices), got {value!r}.")
    point = [int(v) for v in value]
    if shape is not None and not all(0 <= v < n for v, n in zip(point, shape, strict=True)):
        raise Invalid(f"Invalid Input. {where} = {point} is outside the image, whose voxel grid is {list(shape)}.")
    if shape is None and min(point) < 0:
        raise Invalid(f"Invalid Input. {where} = {point} has a negative voxel index.")
    return point


def parse_clicks(
    params: Mapping[str, Any], label_names: Mapping[str, int], shape: tuple[int, int, int] | None
) -> dict[str, list[list[int]]]:
    """The clicks of one request, checked: each key a label name of the bundle, each point 3 voxel indices.

    Args:
        params: the request's parameters, e.g. `{"spleen": [[40, 52, 17]], "background": [[10, 10, 5]]}`;
            `{}` asks for automatic segmentation.
        label_names: the bundle's `label_names` (`{"spleen": 1, "background": 0}`): the accepted keys.
        shape: the image's voxel grid when known; points must lie inside it.

    Returns:
        `{name: [[i, j, k], ...]}` for every name given (empty lists kept), integers only.

    Raises:
        Invalid: an unknown key, a point that is not 3 integers or lies outside the image, or more than
            `MAX_POINTS_PER_LABEL` points for one label.

    Example:
        >>> parse_clicks({"spleen": [[4, 5, 6]]}, {"spleen": 1, "background": 0}, (64, 64, 32))
        {'spleen': [[4, 5, 6]]}
    """
    if not isinstance(params, Mapping):
        raise Invalid('Invalid Input. The clicks must be an object such as {"spleen": [[i, j, k]]}.')
    clicks: dict[str, list[list[int]]] = {}
    for name, points in params.items():
        if name not in label_names:
            raise Invalid(
                f"Invalid Input. {name!r} is not a label of this DeepEdit model: clicks are given by label name, "
                f"one of {_names(label_names)}, as lists of [i, j, k] voxel indices."
            )
        if not isinstance(points, list | tuple):
            raise Invalid(f'Invalid Input. "{name}" must be a list of [i, j, k] points, got {points!r}.')
        if len(points) > MAX_POINTS_PER_LABEL:
            raise Invalid(
                f'Invalid Input. "{name}" has {len(points)} points; at most {MAX_POINTS_PER_LABEL} per label.'
            )
        clicks[name] = [_point(p, f'"{name}"[{n}]', shape) for n, p in enumerate(points)]
    return clicks
