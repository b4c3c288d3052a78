"""Comparing the outputs of the exact run and a faster run of the same request, file by file.

Segmentations (`.nrrd`, `.nii`, `.nii.gz`): Dice per label value present in either. Classification
outputs (`.csv`, `.json`): the top-1 class of every row and the largest score difference. Files are
paired by their path relative to their output folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SEGMENTATION_SUFFIXES = (".nrrd", ".nii", ".nii.gz")


@dataclass
class Comparison:
    """What the check found; `passed` when every segmentation label reaches `min_dice` and top-1 never changed."""

    dice: dict[str, float] = field(default_factory=dict)  # "<file>:<label>" → Dice
    top1_changed: int = 0  # classification rows whose top-1 class differs
    rows: int = 0  # classification rows compared
    max_score_delta: float = 0.0
    not_compared: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def min_dice(self) -> float | None:
        return min(self.dice.values()) if self.dice else None

    def failures(self, min_dice: float) -> list[str]:
        reasons = list(self.problems)
        reasons += [f"Dice {d:.4f} < {min_dice} for {name}" for name, d in sorted(self.dice.items()) if d < min_dice]
        if self.top1_changed:
            reasons.append(f"top-1 class changed in {self.top1_changed} of {self.rows} rows")
        return reasons

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "min_dice": self.min_dice()}


def _read_segmentation(path: Path) -> np.ndarray:
    if path.name.lower().endswith(".nrrd"):
        import nrrd

        data, _header = nrrd.read(str(path))
        return np.asarray(data)
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def dice_per_label(exact: np.ndarray, fast: np.ndarray) -> dict[int, float]:
    """Dice of each non-zero value present in either volume."""
    labels = sorted((set(np.unique(exact).tolist()) | set(np.unique(fast).tolist())) - {0})
    scores = {}
    for label in labels:
        a, b = exact == label, fast == label
        total = int(a.sum()) + int(b.sum())
        scores[int(label)] = 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
    return scores


def _score_rows(path: Path) -> list[list[float]]:
    """Numeric rows of a classification output: CSV rows (non-numeric cells dropped), or JSON lists/dicts."""
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data if isinstance(data, list) else [data]
        if rows and not isinstance(rows[0], (list, dict)):
            rows = [rows]
        return [[float(v) for v in (r.values() if isinstance(r, dict) else r) if _is_number(v)] for r in rows]
    with path.open(newline="") as handle:
        return [[float(v) for v in row if _is_number(v)] for row in csv.reader(handle)]


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def compare_files(exact: dict[str, Path], fast: dict[str, Path]) -> Comparison:
    """Compare two runs' outputs (`relative name → path`)."""
    result = Comparison()
    for name in sorted(set(exact) ^ set(fast)):
        result.problems.append(f"{name} is in one run's outputs only")
    for name in sorted(set(exact) & set(fast)):
        a, b = exact[name], fast[name]
        lower = name.lower()
        try:
            if lower.endswith(SEGMENTATION_SUFFIXES):
                x, y = _read_segmentation(a), _read_segmentation(b)
                if x.shape != y.shape:
                    result.problems.append(f"{name}: shape {y.shape} instead of {x.shape}")
                    continue
                for label, score in dice_per_label(x, y).items():
                    result.dice[f"{name}:{label}"] = round(score, 6)
            elif lower.endswith((".csv", ".json")):
                _compare_scores(name, _score_rows(a), _score_rows(b), result)
            else:
                result.not_compared.append(name)
        except Exception as exc:  # an output the check cannot read is a failed check, not a failed request
            result.problems.append(f"{name}: cannot compare ({type(exc).__name__}: {exc})")
    return result


def _compare_scores(name: str, exact: list[list[float]], fast: list[list[float]], result: Comparison) -> None:
    if len(exact) != len(fast) or any(len(r) != len(s) for r, s in zip(exact, fast, strict=False)):
        result.problems.append(f"{name}: the rows differ in number or length")
        return
    for row, other in zip(exact, fast, strict=True):
        if not row:
            continue
        result.rows += 1
        result.top1_changed += int(np.argmax(row) != np.argmax(other))
        result.max_score_delta = max(result.max_score_delta, float(np.max(np.abs(np.subtract(row, other)))))
