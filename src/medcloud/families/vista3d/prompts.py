"""VISTA-3D prompt rules (class and point prompts) as pure validation, following the official bundle 0.5.4.

Where the rules come from (model-zoo `models/vista3d`):
- `configs/inference.json` `everything_labels`: 1..132 minus 2, 16, 18, 20, 21, 23–27, 128–132 is what
  "segment everything" segments; `subclass`: the umbrella classes 2 kidney → (14, 5),
  20 lung → 28..32 and 21 bone → 33..56, 63..97, 114, 120, 122.
- `scripts/evaluator.py` `check_prompts_format`: classes below 255; without points only 1..132 minus
  16, 18, 129, 130, 131 ("Undefined label prompt detected. Provide point prompts for zero-shot.");
  points need point_labels of the same length; with points a single class.
- `scripts/inferer.py`: a class above the point head's `last_supported` (132) is zero-shot, so its
  class vector is dropped and only the point head runs.
- `VISTA3D.convert_point_label`: for the special classes 23–27, 57 and 128 (tumours, vessels, trachea,
  lesions) point labels 0/1 become 2/3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medcloud.errors import Invalid

LAST_SUPPORTED = 132
MAX_CLASS = 254
ALL_NAMED = frozenset(range(1, LAST_SUPPORTED + 1))
EVERYTHING_EXCLUDED = frozenset({2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})
EVERYTHING: tuple[int, ...] = tuple(sorted(ALL_NAMED - EVERYTHING_EXCLUDED))
NEED_POINTS = frozenset({16, 18, 129, 130, 131})
SUBCLASSES: dict[int, tuple[int, ...]] = {
    2: (14, 5),
    20: (28, 29, 30, 31, 32),
    21: tuple(range(33, 57)) + tuple(range(63, 98)) + (114, 120, 122),
}
SPECIAL_CLASSES = frozenset({23, 24, 25, 26, 27, 57, 128})
POINT_LABELS = frozenset({0, 1, 2, 3})


@dataclass(frozen=True)
class PromptRules:
    """The class rules of one VISTA-3D bundle (the official values unless its config says otherwise)."""

    everything: tuple[int, ...] = EVERYTHING
    subclasses: Mapping[int, tuple[int, ...]] = field(default_factory=lambda: dict(SUBCLASSES))
    last_supported: int = LAST_SUPPORTED
    need_points: frozenset[int] = NEED_POINTS
    special: frozenset[int] = SPECIAL_CLASSES
    names: Mapping[int, str] = field(default_factory=dict)

    def describe(self, cls: int) -> str:
        name = self.names.get(cls)
        return f"{cls} ({name})" if name else str(cls)


@dataclass(frozen=True)
class Prompt:
    """A validated request: classes after umbrella expansion, points as original voxel indices."""

    classes: tuple[int, ...] | None
    points: tuple[tuple[float, float, float], ...] | None = None
    point_labels: tuple[int, ...] | None = None


def parse_prompt(params: Mapping[str, Any], rules: PromptRules = PromptRules()) -> Prompt:
    """Validate `bundle_params` (`label_prompt`, `points`, `point_labels`) or raise Invalid with a sentence.

    No label_prompt and no points (or label_prompt = every class 1..132) segments "everything".

    Example:
        >>> parse_prompt({"label_prompt": [2]}).classes
        (14, 5)
    """
    classes = _classes(params.get("label_prompt"), rules)
    points = _points(params.get("points"))
    labels = _point_labels(params.get("point_labels"), points)
    if points is None:
        if classes is None or set(classes) == ALL_NAMED:
            return Prompt(classes=tuple(rules.everything))
        _check_automatic(classes, rules)
        return Prompt(classes=_expand(classes, rules))
    if classes is not None:
        _check_single(classes, rules)
        labels = _special_labels(labels, classes[0], rules)
    return Prompt(classes=classes, points=points, point_labels=labels)


def check_points_inside(points: Sequence[Sequence[float]], shape: Sequence[int]) -> None:
    """Raise Invalid naming the first point that is not a voxel index of an image of `shape`."""
    dims = tuple(int(s) for s in shape[:3])
    for number, point in enumerate(points, start=1):
        if not all(0 <= c <= s - 1 for c, s in zip(point, dims, strict=True)):
            shown = [int(c) if float(c).is_integer() else c for c in point]
            raise Invalid(
                f"Point {number} {shown} is outside the image: points are [x, y, z] voxel indices "
                f"and the image shape is {list(dims)}."
            )


def _classes(raw: Any, rules: PromptRules) -> tuple[int, ...] | None:
    if raw is None or (isinstance(raw, list | tuple) and len(raw) == 0):
        return None
    if isinstance(raw, int | str) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise Invalid(f"label_prompt must be a list of class indices such as [3], not {raw!r}.")
    out: list[int] = []
    for value in raw:
        cls = _class_index(value, rules)
        if cls not in out:
            out.append(cls)
    return tuple(out)


def _class_index(value: Any, rules: PromptRules) -> int:
    if isinstance(value, str):
        by_name = {n.lower(): i for i, n in rules.names.items()}
        text = value.strip().lower()
        value = int(text) if text.isdigit() else by_name.get(text, value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLASS:
        raise Invalid(
            f"label_prompt has an unknown class {value!r}: VISTA-3D classes are integers 1 to {MAX_CLASS} "
            f"(1 to {rules.last_supported} are named classes, {rules.last_supported + 1} to {MAX_CLASS} zero-shot)."
        )
    return value


def _points(raw: Any) -> tuple[tuple[float, float, float], ...] | None:
    if raw is None or (isinstance(raw, list | tuple) and len(raw) == 0):
        return None
    if not isinstance(raw, list | tuple):
        raise Invalid("points must be a list of [x, y, z] voxel indices of the image.")
    out = []
    for number, point in enumerate(raw, start=1):
        ok = isinstance(point, list | tuple) and len(point) == 3
        ok = ok and all(isinstance(c, int | float) and not isinstance(c, bool) for c in point)
        if not ok:
            raise Invalid(f"Point {number} must be [x, y, z] voxel indices of the image, not {point!r}.")
        out.append((float(point[0]), float(point[1]), float(point[2])))
    return tuple(out)


def _point_labels(raw: Any, points: tuple[tuple[float, float, float], ...] | None) -> tuple[int, ...] | None:
    empty = raw is None or (isinstance(raw, list | tuple) and len(raw) == 0)
    if points is None:
        if not empty:
            raise Invalid("point_labels were given without points: give one [x, y, z] point per label.")
        return None
    if empty:
        raise Invalid("points need point_labels: one label per point (1 foreground, 0 background).")
    if not isinstance(raw, list | tuple):
        raise Invalid("point_labels must be a list with one label per point (1 foreground, 0 background).")
    if len(raw) != len(points):
        raise Invalid(f"points and point_labels must have the same length: {len(points)} points, {len(raw)} labels.")
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int) or value not in POINT_LABELS:
            raise Invalid(
                f"point_labels must be 0 or 1 (background, foreground), or 2 or 3 for VISTA-3D's special "
                f"classes; got {value!r}."
            )
    return tuple(raw)


def _check_automatic(classes: tuple[int, ...], rules: PromptRules) -> None:
    for cls in classes:
        if cls > rules.last_supported:
            raise Invalid(
                f"Class {cls} is zero-shot (classes {rules.last_supported + 1} to {MAX_CLASS}): "
                "it needs points, with that class alone in label_prompt."
            )
        if cls in rules.need_points:
            raise Invalid(
                f"Class {rules.describe(cls)} has no automatic segmentation in VISTA-3D: "
                "it needs points, with that class alone in label_prompt."
            )


def _check_single(classes: tuple[int, ...], rules: PromptRules) -> None:
    if len(classes) != 1:
        raise Invalid(f"With points, label_prompt must name exactly one class; got {len(classes)} ({list(classes)}).")
    subclasses = rules.subclasses.get(classes[0])
    if subclasses:
        raise Invalid(
            f"Class {rules.describe(classes[0])} stands for several classes ({', '.join(map(str, subclasses))}); "
            "with points, give exactly one of them."
        )


def _expand(classes: tuple[int, ...], rules: PromptRules) -> tuple[int, ...]:
    out: list[int] = []
    for cls in classes:
        for sub in rules.subclasses.get(cls, (cls,)):
            if sub not in out:
                out.append(sub)
    return tuple(out)


def _special_labels(labels: tuple[int, ...] | None, cls: int, rules: PromptRules) -> tuple[int, ...] | None:
    """0/1 become 2/3 for the special classes, as `VISTA3D.convert_point_label` does in training."""
    if labels is None or cls not in rules.special:
        return labels
    return tuple(v + 2 if v in (0, 1) else v for v in labels)
