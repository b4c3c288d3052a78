"""`CheckedPredictor`: serves a model in a faster mode only after checking it against the exact run.

The faster network is built in the background (an OpenVINO conversion takes seconds for a UNet and
minutes for VISTA-3D); until it is ready the exact network serves. The first request after that
(a real image of the experiment's datasets, with the request's own prompts) is the check: it is
answered by the exact run, the faster run of the same request is compared with it (`compare.py`),
and from the next request on the faster mode serves, or, when the outputs differ beyond the
threshold (Dice per label, classification top-1) or the faster run fails, the exact one does, with
the reason in `report()`. A weight swap loads the exact network at once, builds the faster one again
in the background and checks again: no gap in service, no answer from an unchecked network.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from medcloud.inference.accel.compare import compare_files
from medcloud.inference.accel.modes import resolve
from medcloud.inference.predictors import Predictor

log = logging.getLogger(__name__)
PREPARE_WAIT_S = 120.0  # at load, how long to wait for the faster network before answering "ready" anyway


class ModeSwitchable(Predictor, Protocol):
    """A predictor that can run its network in the faster modes it lists."""

    fast_modes: tuple[str, ...]  # e.g. ("bf16", "openvino")

    @property
    def device_type(self) -> str:
        """ "cpu" or "cuda": where the network runs."""

    def prepare_mode(self, mode: str) -> None:
        """Build the network for `mode` from the current weights; blocking, safe while requests run."""

    def use_mode(self, mode: str) -> None:
        """Run the following requests in `mode` ("exact" or one of `fast_modes`)."""


def _relative(files: list[Path], folder: Path) -> dict[str, Path]:
    return {Path(f).relative_to(folder).as_posix(): Path(f) for f in files}


class CheckedPredictor:
    """`inner` in the mode `requested` resolves to on this machine, once its outputs passed the check.

    Args:
        inner: the family's predictor.
        requested: `exact`, `fast`, `bf16` or `openvino` (the experiment's `model_params.inference_mode`,
            else the server's `MEDCLOUD_INFERENCE_MODE`).
        min_dice: the check's threshold per segmentation label (`MEDCLOUD_INFERENCE_CHECK_MIN_DICE`).
        prepare_wait_s: how long `load` waits for the faster network (then it goes on being built).
    """

    def __init__(
        self, inner: ModeSwitchable | Predictor, requested: str, min_dice: float, prepare_wait_s: float = PREPARE_WAIT_S
    ) -> None:
        self.inner: Any = inner
        self.requested = requested
        self.min_dice = min_dice
        self.prepare_wait_s = prepare_wait_s
        self.candidate = "exact"  # the faster mode this machine can run (checked or not yet)
        self.active = "exact"  # the mode requests run in now
        self.reason = ""
        self.check: dict[str, Any] | None = None
        self._generation = 0  # one per build of the faster network (load, each swap)
        self._built = threading.Event()
        self._build_error: str | None = None
        self.build_s: float | None = None  # how long the last build of the faster network took

    # ---- building the faster network --------------------------------------------------------------
    def _build(self, generation: int) -> None:
        started = time.perf_counter()
        try:
            prepare = getattr(self.inner, "prepare_mode", None)
            if prepare is not None:
                prepare(self.candidate)
        except Exception as exc:  # the faster path cannot be built for this model: exact it is, and why
            log.exception("Building the %s network failed", self.candidate)
            error: str | None = f"building the {self.candidate} network failed: {type(exc).__name__}: {exc}"
        else:
            error = None
            log.info("The %s network is ready (%.1f s)", self.candidate, time.perf_counter() - started)
        if generation == self._generation:
            self._build_error = error
            self.build_s = round(time.perf_counter() - started, 3)
            self._built.set()

    def _start_build(self) -> None:
        self._generation += 1
        self._built.clear()
        self._build_error = None
        self.reason = f"building the {self.candidate} network; the exact one serves meanwhile"
        threading.Thread(target=self._build, args=(self._generation,), daemon=True, name="accel-build").start()

    def wait_built(self, timeout: float) -> bool:
        """Whether the faster network of the current weights was built (or failed to be) within `timeout`."""
        return self._built.wait(timeout)

    # ---- the Predictor protocol ---------------------------------------------------------------------
    def load(self) -> None:
        self.inner.load()
        device = getattr(self.inner, "device_type", "cpu")
        resolution = resolve(self.requested, device, tuple(getattr(self.inner, "fast_modes", ())))
        self.candidate, self.reason = resolution.mode, resolution.reason
        if self.candidate == "exact":
            if self.requested != "exact":
                log.warning("Inference mode %s runs as exact: %s", self.requested, self.reason)
            return
        self._start_build()
        if self.wait_built(self.prepare_wait_s):
            self.reason = "checked on the next request (answered by the exact run)"

    @property
    def pending(self) -> bool:
        return self.candidate != "exact" and self.check is None

    def predict(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        if self.pending and self._built.is_set():
            if self._build_error is None:
                return self._check(image, params, out_dir)
            self._fail({"mode": self.candidate}, [self._build_error])
        self.inner.use_mode(self.active)
        return self.inner.predict(image, params, out_dir)

    def _check(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        """Answer with the exact run; run `candidate` on the same request and decide from the comparison."""
        self.inner.use_mode("exact")
        started = time.perf_counter()
        exact_files = self.inner.predict(image, params, out_dir)  # a request the model refuses raises here
        check: dict[str, Any] = {"image": Path(image).name, "mode": self.candidate}
        check["exact_s"] = round(time.perf_counter() - started, 3)
        with tempfile.TemporaryDirectory(prefix="medcloud-check-") as scratch:
            try:
                self.inner.use_mode(self.candidate)
                started = time.perf_counter()
                fast_files = self.inner.predict(image, params, Path(scratch))
                check["fast_s"] = round(time.perf_counter() - started, 3)
                comparison = compare_files(_relative(exact_files, out_dir), _relative(fast_files, Path(scratch)))
                failures = comparison.failures(self.min_dice)
                check.update(comparison.as_dict())
            except Exception as exc:  # the faster path cannot run this model: exact it is, and why
                log.exception("The %s run failed", self.candidate)
                failures = [f"the {self.candidate} run failed: {type(exc).__name__}: {exc}"]
            finally:
                self.inner.use_mode("exact")
        if failures:
            self._fail(check, failures)
        else:
            self.check = {**check, "min_dice_required": self.min_dice, "build_s": self.build_s, "passed": True}
            self.active, self.reason = self.candidate, "outputs matched the exact run"
        log.info("Inference mode check: %s (%s)", self.active, self.reason)
        return exact_files

    def _fail(self, check: dict[str, Any], failures: list[str]) -> None:
        self.check = {**check, "min_dice_required": self.min_dice, "passed": False}
        self.active, self.reason = "exact", "; ".join(failures)[:1000]

    def swap_weights(self, weights: Path) -> None:
        self.inner.use_mode("exact")
        self.inner.swap_weights(weights)
        if self.candidate != "exact":  # new weights: the faster network is built again and checked again
            self.active, self.check = "exact", None
            self._start_build()

    def report(self) -> dict[str, Any]:
        """What `GET /experiments/{id}` shows as `inference`."""
        return {
            "requested": self.requested,
            "mode": self.active,
            "candidate": self.candidate,
            "reason": self.reason,
            "check": self.check,
        }
