"""`bundle_params` for the two interactive model families: VISTA-3D prompts and DeepEdit clicks (docs/api.md).

Both check the shape locally so a typo fails before the request; the server checks the rules again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medcloud.client.errors import ClientError

Point = Sequence[int]


def _point(point: Point, what: str) -> list[int]:
    values = list(point)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ClientError(f"{what} must be three integer voxel indices [i, j, k], got {point!r}.")
    return values


def vista3d(
    label_prompt: Sequence[int] | None = None,
    points: Sequence[Point] | None = None,
    point_labels: Sequence[int] | None = None,
) -> dict[str, Any]:
    """VISTA-3D's `bundle_params`: class indices and/or voxel points (1 = foreground, 0 = background).

    `point_labels` defaults to all foreground. With points, VISTA-3D takes at most one class.

    Example:
        >>> vista3d(label_prompt=[3], points=[[40, 30, 20]], point_labels=[1])
        {'label_prompt': [3], 'points': [[40, 30, 20]], 'point_labels': [1]}
    """
    params: dict[str, Any] = {}
    if label_prompt is not None:
        params["label_prompt"] = [int(c) for c in label_prompt]
    if points:
        pts = [_point(p, "A VISTA-3D point") for p in points]
        labels = [int(v) for v in point_labels] if point_labels is not None else [1] * len(pts)
        if len(labels) != len(pts):
            raise ClientError(f"{len(pts)} points but {len(labels)} point labels: give one label per point.")
        if label_prompt is not None and len(params["label_prompt"]) > 1:
            raise ClientError("With points, VISTA-3D takes exactly one class in label_prompt.")
        params.update(points=pts, point_labels=labels)
    elif point_labels:
        raise ClientError("point_labels were given without points.")
    return params


def deepedit(clicks: Mapping[str, Sequence[Point]]) -> dict[str, Any]:
    """DeepEdit's `bundle_params`: clicks by label name, e.g. `{"spleen": [[i, j, k]], "background": [...]}`.

    No clicks (an empty mapping) means automatic segmentation.
    """
    return {name: [_point(p, f"A click on {name!r}") for p in points] for name, points in clicks.items()}
