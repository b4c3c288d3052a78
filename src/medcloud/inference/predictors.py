"""Predictors run inside a model-host process: they load a model once and answer requests warm.

A `BundlePredictor` runs a MONAI bundle's own inference config (`configs/inference.json`): it
instantiates the network and runs the bundle's `initialize` (which loads the checkpoint) once, then
for each request builds a fresh evaluator around the same warm network with `dataset#data` set to
the one image, so nothing a bundle opens for its own data list (`test_fp`, `datalist`) is evaluated.
"""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import torch
from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator

from medcloud.bundles.overrides import check_overrides, check_params

log = logging.getLogger(__name__)

# Defaults for real-time output (API.md §3.4); `model_params.override` comes on top of them.
REALTIME_DEFAULTS: dict[str, Any] = {
    "output_ext": ".nrrd",
    "output_postfix": "seg",
    "output_dtype": "$numpy.uint8",
    "separate_folder": False,
}
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


class Predictor(Protocol):
    """What a model host needs from a model."""

    def load(self) -> None:
        """Load weights and warm up; raise with a sentence on failure."""

    def predict(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        """Write the output files for one image into `out_dir` and return them."""

    def swap_weights(self, weights: Path) -> None:
        """Replace the weights in place, without a gap in service."""


def find_config(bundle_dir: Path) -> Path:
    for name in CONFIG_NAMES:
        path = bundle_dir / "configs" / name
        if path.exists():
            return path
    raise FileNotFoundError(f"No configs/inference.json|yaml in {bundle_dir}")


class BundlePredictor:
    """Serves a custom MONAI bundle through its own inference config.

    Args:
        bundle_dir: the unpacked bundle (holds `configs/` and `models/`).
        overrides: config overrides (`model_params.override`), applied after the real-time defaults.
        image_key: the key of the image in the bundle's input item.
        allow_expressions: the operator's `allow_expression_overrides`; off, client overrides and
            `bundle_params` holding MONAI expressions, references or components are refused here too
            (the API refuses them first; this guards values stored before that check).

    Example:
        >>> predictor = BundlePredictor(Path("spleen"), {"output_ext": ".nii.gz"})
        >>> predictor.load()
        >>> predictor.predict("/data/ct.nii.gz", {}, Path("/tmp/out"))
        [PosixPath('/tmp/out/ct_seg.nii.gz')]
    """

    def __init__(
        self,
        bundle_dir: Path,
        overrides: dict[str, Any] | None = None,
        image_key: str = "image",
        allow_expressions: bool = False,
    ) -> None:
        self.bundle_dir = bundle_dir.resolve()
        self.allow_expressions = allow_expressions
        # Only the client's part is checked: REALTIME_DEFAULTS and the values set in `_parser` are the server's.
        check_overrides(overrides or {}, "model_params.override", allow_expressions=allow_expressions)
        check_params({image_key: None}, "model_params.image_key", allow_expressions=allow_expressions)
        self.overrides = {**REALTIME_DEFAULTS, **(overrides or {})}
        self.image_key = image_key
        self._config = ConfigParser.load_config_file(find_config(self.bundle_dir))
        meta_path = self.bundle_dir / "configs" / "metadata.json"
        self._meta = ConfigParser.load_config_file(meta_path) if meta_path.exists() else {}
        self._network: torch.nn.Module | None = None
        self._fast: dict[str, torch.nn.Module] = {}  # faster wrappers of `_network`, by mode (inference/accel)
        self._mode = "exact"
        self._generation = 0  # bumped by swap_weights: a wrapper built from older weights is dropped
        self._fast_lock = threading.Lock()
        # A new parser would build its own locator and re-scan every MONAI module (~50 ms a request).
        self._locator = ComponentLocator()

    def _parser(self, items: list[dict[str, Any]], out_dir: Path) -> ConfigParser:
        parser = ConfigParser(copy.deepcopy(self._config))
        parser.locator = self._locator
        parser.read_meta(copy.deepcopy(self._meta))
        parser["bundle_root"] = str(self.bundle_dir)
        for key, value in self.overrides.items():
            parser[key] = value
        parser["output_dir"] = "$" + repr(str(out_dir))
        parser["dataset#data"] = items
        if "dataloader" in parser and isinstance(parser["dataloader"], dict):
            parser["dataloader#num_workers"] = 0  # one image: worker start-up would dominate
        if self._network is not None:
            parser["network"] = self._fast[self._mode] if self._mode != "exact" else self._network
        return parser

    fast_modes: tuple[str, ...] = ("bf16", "openvino")  # best first (docs/performance.md); OpenVINO without bf16

    @property
    def device_type(self) -> str:
        assert self._network is not None, "load() first"
        return next(self._network.parameters()).device.type

    def prepare_mode(self, mode: str) -> None:
        """Build the network for `mode` from the current weights (blocking; safe while requests run)."""
        from medcloud.inference.accel.networks import OpenVinoNetwork, accelerated

        assert self._network is not None, "load() first"
        generation = self._generation
        wrapper = accelerated(self._network, mode, self.device_type)
        example = self._example_input()
        if isinstance(wrapper, OpenVinoNetwork) and example is not None:
            wrapper.build(example)  # else compiled on its first call
        with self._fast_lock:
            if generation == self._generation:
                self._fast[mode] = wrapper

    def use_mode(self, mode: str) -> None:
        """Serve the following requests with the network in `mode` ("exact", or a faster one: inference/accel)."""
        if mode != "exact" and mode not in self._fast:
            self.prepare_mode(mode)
        self._mode = mode

    def load(self) -> None:
        parser = self._parser([], self.bundle_dir / ".medcloud-warmup")
        for index in range(len(parser.get("initialize", None) or [])):
            parser.get_parsed_content(f"initialize#{index}")
        self._network = parser.get_parsed_content("network")
        self._network.eval()
        self._warm_up()

    def _example_input(self) -> torch.Tensor | None:
        """Zeros of the bundle's declared input shape (metadata `network_data_format`), or None."""
        spec = (self._meta.get("network_data_format") or {}).get("inputs", {}).get(self.image_key, {})
        shape, channels = spec.get("spatial_shape"), spec.get("num_channels")
        if not shape or not channels or not all(isinstance(s, int) for s in [*shape, channels]):
            return None
        return torch.zeros(1, channels, *shape, device=next(self._network.parameters()).device)  # type: ignore[union-attr]

    def _warm_up(self) -> None:
        """One forward pass on zeros of the bundle's declared input shape, so the first request is warm."""
        example = self._example_input()
        if example is None:
            return
        try:
            with torch.no_grad():
                self._network(example)
        except Exception as exc:  # a bundle with an unusual input contract: warming up is only an optimisation
            log.info("Warm-up forward pass skipped: %s", exc)

    def predict(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        check_params(params, "bundle_params", allow_expressions=self.allow_expressions)
        out_dir.mkdir(parents=True, exist_ok=True)
        parser = self._parser([{**params, self.image_key: image}], out_dir)
        parser.get_parsed_content("evaluator").run()
        return sorted(p for p in out_dir.rglob("*") if p.is_file())

    def swap_weights(self, weights: Path) -> None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        with self._fast_lock:
            self._generation += 1
            self._fast.clear()  # built from the old weights; `prepare_mode` builds them again
            self._mode = "exact"
        self._network.load_state_dict(state)  # type: ignore[union-attr]
