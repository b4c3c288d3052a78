"""`Vista3dPredictor`: serves a VISTA-3D bundle in the official layout with class and point prompts, warm.

Only the bundle's `network_def` is instantiated (the official configs import a `scripts` package);
preprocessing, prompt rules and post-processing follow the official `configs/inference.json` and
its evaluator/inferer scripts, reimplemented in `prompts` and `transforms`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInfererAdapt
from monai.transforms.utils import keep_components_with_positive_points

from medcloud.errors import Invalid
from medcloud.families.vista3d.cache import DEFAULT_MAX_BYTES, ClickCache, point_window_inference
from medcloud.families.vista3d.prompts import Prompt, PromptRules, check_points_inside, parse_prompt
from medcloud.families.vista3d.transforms import (
    PreparedImage,
    PreprocessSettings,
    ensure_connected_components,
    logits_to_labels,
    map_points,
    original_grid_index,
    prepare,
    to_original_grid,
)
from medcloud.families.vista3d.window import WindowForward
from medcloud.inference.accel.networks import autocast
from medcloud.inference.nrrd_writer import write_raw_nrrd
from medcloud.inference.predictors import find_config

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")


@dataclass(frozen=True)
class Vista3dConfig:
    """What the predictor reads from `configs/inference.json` (official values where a key is missing)."""

    preprocess: PreprocessSettings
    rules: PromptRules
    roi_size: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.3
    sw_batch_size: int = 1


def read_config(parser: ConfigParser, names: dict[int, str] | None = None) -> Vista3dConfig:
    """Patch size, resampling, intensity window, crop margin, everything-labels and umbrella classes."""
    defaults = PreprocessSettings()
    window = _transform_args(parser, "ScaleIntensityRanged")
    crop = _transform_args(parser, "CropForegroundd")
    preprocess = PreprocessSettings(
        spacing=tuple(float(v) for v in _parsed(parser, "resample_spacing", defaults.spacing)),  # type: ignore[arg-type]
        a_min=float(window.get("a_min", defaults.a_min)),
        a_max=float(window.get("a_max", defaults.a_max)),
        crop_margin=int(crop.get("margin", defaults.crop_margin)),
    )
    base = PromptRules()
    subclass = _parsed(parser, "subclass", None)
    rules = PromptRules(
        everything=tuple(sorted(int(c) for c in _parsed(parser, "everything_labels", base.everything))),
        subclasses={int(k): tuple(int(c) for c in v) for k, v in subclass.items()} if subclass else base.subclasses,
        names=names or {},
    )
    return Vista3dConfig(
        preprocess=preprocess,
        rules=rules,
        roi_size=tuple(int(v) for v in _parsed(parser, "patch_size", (128, 128, 128))),  # type: ignore[arg-type]
        overlap=float(_parsed(parser, "inferer#overlap", 0.3)),
        sw_batch_size=int(_parsed(parser, "sw_batch_size", 1)),
    )


def _parsed(parser: ConfigParser, key: str, default: Any) -> Any:
    try:
        return parser.get_parsed_content(key) if key in parser else default
    except Exception:  # an expression that needs the absent `scripts` package: keep the official value
        log.warning("VISTA-3D config key %s could not be evaluated; using %r", key, default)
        return default


def _transform_args(parser: ConfigParser, name: str) -> dict[str, Any]:
    for index, item in enumerate(parser.get("preprocessing_transforms", None) or []):
        if isinstance(item, dict) and str(item.get("_target_", "")).split(".")[-1] == name:
            return {k: _parsed(parser, f"preprocessing_transforms#{index}#{k}", v) for k, v in item.items()}
    return {}


def image_stem(image: str | Path) -> str:
    """`ct.nii.gz` → `ct`; a DICOM folder → its name."""
    name = Path(image).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_token(image: str | Path) -> Hashable:
    """Identity of an image on disk: its files' inodes, sizes and modification times. Not the path: each
    request gets the cached file hard-linked into a folder of its own (sandbox.py), under a new path."""
    path = Path(image).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return tuple((s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size) for s in (p.stat() for p in files))


class Vista3dPredictor:
    """Segments with VISTA-3D: class prompts (sliding window) and point clicks (point windows, warm cache).

    Args:
        bundle_dir: a bundle in the official layout (`configs/inference.json` with `network_def`,
            `configs/metadata.json`, `models/model.pt`).
        labels: class names by index (the experiment's labels), for names in `label_prompt` and messages.
        roi_size: window size; default the bundle's `patch_size` (128³ for the official bundle).
        device: default CUDA when available, else CPU.
        reuse: keep what does not depend on the click (preprocessed image, encoder features, class-head
            logits, whole windows) between requests on the same image and weights; False computes every
            request from scratch with the same code (same output, for tests and comparisons).
        max_cache_bytes: the bound on what `reuse` keeps besides the preprocessed image (`cache`).

    Example:
        >>> predictor = Vista3dPredictor(Path("vista3d"))  # doctest: +SKIP
        >>> predictor.load()  # doctest: +SKIP
        >>> predictor.predict("ct.nii.gz", {"label_prompt": [3]}, Path("out"))  # doctest: +SKIP
        [PosixPath('out/ct_seg.nrrd')]
    """

    def __init__(
        self,
        bundle_dir: Path,
        labels: dict[str, str] | None = None,
        *,
        roi_size: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        reuse: bool = True,
        max_cache_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.parser = ConfigParser(ConfigParser.load_config_file(find_config(self.bundle_dir)))
        self.parser["bundle_root"] = str(self.bundle_dir)
        names = {int(k): str(v) for k, v in (labels or _metadata_labels(self.bundle_dir)).items() if str(k).isdigit()}
        self.config = read_config(self.parser, names)
        self.roi_size = tuple(int(r) for r in roi_size) if roi_size else self.config.roi_size
        self.network: torch.nn.Module | None = None
        self.reuse = reuse
        self.cache = ClickCache(max_cache_bytes if reuse else 0)
        self.weights_generation = 0  # bumped by swap_weights: part of every cache key
        self.mode = "exact"  # or "bf16", "openvino" (inference/accel): see `fast_modes`
        self.exact_network: torch.nn.Module | None = None
        self._views: dict[str, torch.nn.Module] = {}  # the network with a faster encoder, by mode
        self._prepared: tuple[Hashable, PreparedImage] | None = None
        self.last_timing: dict[str, float] = {}

    def load(self) -> None:
        ensure_connected_components()
        network = self.parser.get_parsed_content("network_def", instantiate=True)
        network.load_state_dict(_state_dict(self.bundle_dir / "models" / "model.pt"))
        self.network = self.exact_network = network.to(self.device).eval()
        self._warm_up()

    def _warm_up(self) -> None:
        """Both heads once on a small zero volume, so the first request does not pay for start-up."""
        assert self.network is not None
        x = torch.zeros(1, 1, 32, 32, 32, device=self.device)
        points = torch.tensor([[[16.0, 16.0, 16.0]]], device=self.device)
        with torch.no_grad(), self._autocast():
            self.network(
                x,
                point_coords=points,
                point_labels=torch.ones(1, 1, device=self.device),
                class_vector=torch.ones(1, 1, dtype=torch.long, device=self.device),
            )

    # bf16: encoder and heads under bf16 autocast; openvino: the image encoder compiled by OpenVINO
    # (inference/accel/networks.py), the heads under bf16 autocast.
    fast_modes: tuple[str, ...] = ("openvino", "bf16")  # best first: the OpenVINO encoder is faster on CPU

    @property
    def device_type(self) -> str:
        return self.device.type

    def prepare_mode(self, mode: str) -> None:
        """Build what `mode` needs from the current weights (the OpenVINO encoder: minutes for the full network)."""
        if mode != "openvino":
            return
        from medcloud.inference.accel.networks import OpenVinoVistaEncoder, with_encoder

        generation = self.weights_generation
        view = with_encoder(self.exact_network, OpenVinoVistaEncoder(self.exact_network.image_encoder, self.roi_size))
        if generation == self.weights_generation:
            self._views[mode] = view

    def use_mode(self, mode: str) -> None:
        """ "exact" (the official bundle's precision: fp32 on CPU, CUDA autocast), "bf16" or "openvino"."""
        if mode not in ("exact", *self.fast_modes):
            raise ValueError(f"VISTA-3D has no inference mode {mode!r}")
        if mode == "openvino" and mode not in self._views:
            self.prepare_mode(mode)
        self.network = self._views.get(mode, self.exact_network)
        self.mode = mode

    def swap_weights(self, weights: Path) -> None:
        assert self.network is not None, "load() first"
        self.cache.clear()  # the preprocessed image does not depend on the weights and stays
        self.weights_generation += 1
        self._views.clear()  # an OpenVINO encoder holds the old weights
        self.network, self.mode = self.exact_network, "exact"
        self.exact_network.load_state_dict(_state_dict(Path(weights)))

    def predict(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        assert self.network is not None, "load() first"
        started = time.perf_counter()
        prompt = parse_prompt(params or {}, self.config.rules)
        prepared = self.prepared(image)
        if prompt.points is not None:
            check_points_inside(prompt.points, prepared.original_shape)
        loaded = time.perf_counter()
        with torch.no_grad(), self._autocast():
            labels = self._segment(prepared, prompt)
        inferred = time.perf_counter()
        volume = to_original_grid(labels, prepared.to_prepared, prepared.original_shape, index=self._grid_index(labels))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{image_stem(image)}_seg.nrrd"
        write_raw_nrrd(path, volume, prepared.original_affine)
        self.last_timing = {
            "load": loaded - started,
            "infer": inferred - loaded,
            "total": time.perf_counter() - started,
        }
        return [path]

    def _grid_index(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The inverse resampling's index (`original_grid_index`) of the current image, kept in the cache."""
        if not self.cache.enabled or self._prepared is None:
            return None
        prepared = self._prepared[1]
        key = ("grid", None, tuple(labels.shape), prepared.original_shape)
        index = self.cache.get(key)
        if index is None:
            index = original_grid_index(
                prepared.to_prepared, prepared.original_shape, labels.shape, device=labels.device
            )
            self.cache.put(key, index)
        return index

    def prepared(self, image: str | Path) -> PreparedImage:
        """The preprocessed image, from memory when the same file (path, mtime) was used last time."""
        if not Path(image).exists():
            raise Invalid(f"The image {Path(image).name} does not exist on the model host.")
        token = image_token(image)
        if not self.reuse or self._prepared is None or self._prepared[0] != token:
            self._prepared = None  # free the previous image before loading the next
            self._prepared = (token, prepare(image, self.config.preprocess, self.device))
        # every cached tensor belongs to this image file, these weights, this preprocessing and window size
        self.cache.bind(
            (token, self.weights_generation, self.mode, self.config.preprocess, self.roi_size, str(self.device))
        )
        return self._prepared[1]

    def _segment(self, prepared: PreparedImage, prompt: Prompt) -> torch.Tensor:
        """Class indices [H, W, D] on the preprocessed grid (255 where no point window reached)."""
        assert self.network is not None
        inputs = prepared.tensor.unsqueeze(0)
        if prompt.points is None:
            classes = torch.tensor(prompt.classes, device=self.device).unsqueeze(-1)
            logits = SlidingWindowInfererAdapt(
                roi_size=self.roi_size,
                sw_batch_size=self.config.sw_batch_size,
                overlap=self.config.overlap,
                mode="gaussian",
                with_coord=True,
            )(inputs, self.network, transpose=True, class_vector=classes, prompt_class=classes)
            return logits_to_labels(torch.as_tensor(logits)[0].float(), prompt.classes)
        points = torch.as_tensor(
            map_points(prompt.points, prepared.to_prepared), dtype=torch.float32, device=self.device
        ).unsqueeze(0)
        point_labels = torch.tensor([prompt.point_labels], device=self.device)
        logits = self._point_logits(inputs, points, point_labels, prompt)
        if prompt.classes is None:  # point-only: keep the components holding a positive point
            logits = keep_components_with_positive_points(logits.unsqueeze(0), points, point_labels)[0]
        return logits_to_labels(logits, prompt.classes)

    def _point_logits(
        self, inputs: torch.Tensor, points: torch.Tensor, point_labels: torch.Tensor, prompt: Prompt
    ) -> torch.Tensor:
        """As the official Vista3dInferer with points: a zero-shot class (> last_supported) runs the point head only."""
        assert self.network is not None
        cls = prompt.classes[0] if prompt.classes else None
        prompt_class = torch.tensor([[cls]], device=self.device) if cls is not None else None
        class_vector = prompt_class if cls is not None and cls <= self.config.rules.last_supported else None
        logits = point_window_inference(
            inputs,
            self.roi_size,
            WindowForward(self.network, self.cache),
            points,
            point_labels,
            class_vector=class_vector,
            prompt_class=prompt_class,
            transpose=True,
        )
        return torch.as_tensor(logits)[0].float().to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.mode in ("bf16", "openvino"):
            return autocast(self.device.type)
        return torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()


def _metadata_labels(bundle_dir: Path) -> dict[str, str]:
    try:
        meta = ConfigParser.load_config_file(bundle_dir / "configs" / "metadata.json")
        channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        return {str(k): str(v) for k, v in channels.items() if str(k) != "0"}
    except Exception:
        return {}


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict, or one under "model"/"state_dict"; a DataParallel "module." prefix is dropped."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state
