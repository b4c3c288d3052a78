"""`CheckedPredictor`: serves a model in a faster mode only after checking it against the exact run.

The check runs on the first request the host gets (a real image of the experiment's datasets, with the
request's own prompts): the request is answered by the exact run, the faster run of the same request
is compared with it (`compare.py`), and from the next request on the faster mode serves, or, when the
outputs differ beyond the threshold (Dice per label, classification top-1) or the faster run fails,
the exact one does, with the reason in `report()`. A weight swap checks again on the next request.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from medcloud.inference.accel.compare import compare_files
from medcloud.inference.accel.modes import resolve
from medcloud.inference.predictors import Predictor

log = logging.getLogger(__name__)


class ModeSwitchable(Predictor, Protocol):
    """A predictor that can run its network in the faster modes it lists."""

    fast_modes: tuple[str, ...]  # e.g. ("bf16", "openvino")

    @property
    def device_type(self) -> str:
        """ "cpu" or "cuda": where the network runs."""

    def use_mode(self, mode: str) -> None:
        """Run the following requests in `mode` ("exact" or one of `fast_modes`); build it on first use."""


def _relative(files: list[Path], folder: Path) -> dict[str, Path]:
    return {Path(f).relative_to(folder).as_posix(): Path(f) for f in files}


class CheckedPredictor:
    """`inner` in the mode `requested` resolves to on this machine, once its outputs passed the check.

    Args:
        inner: the family's predictor.
        requested: `exact`, `fast`, `bf16` or `openvino` (the experiment's `model_params.inference_mode`,
            else the server's `MEDCLOUD_INFERENCE_MODE`).
        min_dice: the check's threshold per segmentation label (`MEDCLOUD_INFERENCE_CHECK_MIN_DICE`).
    """

    def __init__(self, inner: ModeSwitchable | Predictor, requested: str, min_dice: float) -> None:
        self.inner: Any = inner
        self.requested = requested
        self.min_dice = min_dice
        self.candidate = "exact"  # the faster mode this machine can run (checked or not yet)
        self.active = "exact"  # the mode requests run in now
        self.reason = ""
        self.check: dict[str, Any] | None = None

    def load(self) -> None:
        self.inner.load()
        device = getattr(self.inner, "device_type", "cpu")
        resolution = resolve(self.requested, device, tuple(getattr(self.inner, "fast_modes", ())))
        self.candidate, self.reason = resolution.mode, resolution.reason
        if self.candidate == "exact" and self.requested != "exact":
            log.warning("Inference mode %s runs as exact: %s", self.requested, self.reason)
        elif self.candidate != "exact":
            self.reason = "checked on the first request (answered by the exact run)"

    @property
    def pending(self) -> bool:
        return self.candidate != "exact" and self.check is None

    def predict(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        if self.pending:
            return self._check(image, params, out_dir)
        self.inner.use_mode(self.active)
        return self.inner.predict(image, params, out_dir)

    def _check(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        """Answer with the exact run; run `candidate` on the same request and decide from the comparison."""
        self.inner.use_mode("exact")
        started = time.perf_counter()
        exact_files = self.inner.predict(image, params, out_dir)  # a request the model refuses raises here
        exact_s = time.perf_counter() - started
        self.check = {"image": Path(image).name, "mode": self.candidate, "min_dice_required": self.min_dice}
        with tempfile.TemporaryDirectory(prefix="medcloud-check-") as scratch:
            try:
                self.inner.use_mode(self.candidate)
                started = time.perf_counter()
                fast_files = self.inner.predict(image, params, Path(scratch))
                self.check["fast_s"] = round(time.perf_counter() - started, 3)
                comparison = compare_files(_relative(exact_files, out_dir), _relative(fast_files, Path(scratch)))
                failures = comparison.failures(self.min_dice)
                self.check.update(comparison.as_dict())
            except Exception as exc:  # the faster path cannot run this model: exact it is, and why
                log.exception("The %s run failed", self.candidate)
                failures = [f"the {self.candidate} run failed: {type(exc).__name__}: {exc}"]
            finally:
                self.inner.use_mode("exact")
        self.check["exact_s"] = round(exact_s, 3)
        self.check["passed"] = not failures
        self.active = "exact" if failures else self.candidate
        self.reason = "; ".join(failures)[:1000] if failures else "outputs matched the exact run"
        log.info("Inference mode check: %s (%s)", self.active, self.reason)
        return exact_files

    def swap_weights(self, weights: Path) -> None:
        self.inner.use_mode("exact")
        self.inner.swap_weights(weights)
        if self.candidate != "exact":  # new weights: the faster copy is rebuilt and checked again
            self.active, self.check = "exact", None
            self.reason = "checked again on the next request (new weights)"

    def report(self) -> dict[str, Any]:
        """What `GET /experiments/{id}` shows as `inference`."""
        return {
            "requested": self.requested,
            "mode": self.active,
            "candidate": self.candidate,
            "reason": self.reason,
            "check": self.check,
        }
