"""`DeepEditPredictor`: a DeepEdit bundle served warm by its own `configs/inference.json`, clicks as data keys.

The official config's preprocessing turns the clicks of the data item (`{"spleen": [[i, j, k]]}`,
voxel indices of the image) into guidance channels with the bundle's own
`scripts.transforms.OrientationGuidanceMultipleLabelDeepEditd` and MONAI's DeepEdit transforms, so the
bundle's `scripts` package must be importable: `bundle_scripts_importable` puts the bundle folder first
on `sys.path` and drops a `scripts` package of another folder that this process imported before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from medcloud.families.deepedit.prompts import parse_clicks
from medcloud.inference.predictors import BundlePredictor, find_config

__all__ = ["DeepEditPredictor", "bundle_scripts_importable", "image_shape"]


def bundle_scripts_importable(bundle_dir: Path) -> None:
    """Make `import scripts` (and `scripts.transforms`) load `bundle_dir/scripts`, whatever was imported before."""
    root = str(Path(bundle_dir).resolve())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    loaded = sys.modules.get("scripts")
    origin = getattr(loaded, "__file__", None) or ""
    if loaded is not None and not origin.startswith(root + "/"):
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]
    importlib.invalidate_caches()
    importlib.import_module("scripts.transforms")


def image_shape(image: str | Path) -> tuple[int, int, int] | None:
    """The voxel grid of a NIfTI or NRRD file from its header (the order `LoadImaged` returns); None otherwise."""
    name = str(image).lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = tuple(int(n) for n in nib.load(str(image)).shape)
        elif name.endswith((".nrrd", ".nhdr")):
            import nrrd

            shape = tuple(int(n) for n in nrrd.read_header(str(image))["sizes"])
        else:
            return None
    except Exception:  # an unreadable header: the bundle's reader will say what is wrong with the file
        return None
    return (shape[0], shape[1], shape[2]) if len(shape) == 3 else None


class DeepEditPredictor(BundlePredictor):
    """Serves a DeepEdit bundle (official `spleen_deepedit_annotation` layout): no clicks = automatic mode.

    Args:
        bundle_dir: the unpacked bundle (`configs/inference.json`, `models/model.pt`, `scripts/`).
        label_names: the experiment's `{"spleen": 1, "background": 0}`; replaces the config's `label_names`
            (same number of labels as the network's channels). None keeps the bundle's own.
        overrides: further config overrides (`model_params.override`), after the real-time defaults.
        allow_expressions: the operator's `allow_expression_overrides` (see `BundlePredictor`).

    One request is one image; the output is one raw uint8 NRRD (`<image>_seg.nrrd`) on the image's grid with
    the label values of `label_names`. On CPU the evaluator's `amp` is turned off (autocast is CUDA-only).

    Example:
        >>> predictor = DeepEditPredictor(Path("deepedit"), {"spleen": 1, "background": 0})
        >>> predictor.load()
        >>> predictor.predict("/data/ct.nii.gz", {"spleen": [[40, 52, 17]]}, Path("/tmp/out"))
        [PosixPath('/tmp/out/ct_seg.nrrd')]
    """

    def __init__(
        self,
        bundle_dir: Path,
        label_names: Mapping[str, int] | None = None,
        overrides: dict[str, Any] | None = None,
        allow_expressions: bool = False,
    ) -> None:
        bundle_dir = Path(bundle_dir).resolve()
        own = ConfigParser.load_config_file(find_config(bundle_dir)).get("label_names")
        names = dict(label_names) if label_names else dict(own or {})
        if not names:
            raise ValueError(f"{bundle_dir} is not a DeepEdit bundle: its inference config has no label_names.")
        if isinstance(own, dict) and len(own) != len(names):
            raise ValueError(
                f"The bundle has {len(own)} labels ({', '.join(own)}) but {len(names)} were given ({', '.join(names)})."
            )
        server: dict[str, Any] = {}
        if label_names:
            server["label_names"] = names
        if not torch.cuda.is_available():
            server["evaluator#amp"] = False
        super().__init__(bundle_dir, overrides, "image", allow_expressions=allow_expressions)
        self.overrides = {**self.overrides, **server}  # after the client's check: these are the server's values
        self.label_names = names

    def load(self) -> None:
        from medcloud.inference import nrrd_writer

        nrrd_writer.register()  # `.nrrd` as raw NRRD (pynrrd), not ITK's writer
        bundle_scripts_importable(self.bundle_dir)
        super().load()

    def predict(self, image: str, params: dict[str, Any], out_dir: Path) -> list[Path]:
        clicks = parse_clicks(params, self.label_names, image_shape(image))
        return super().predict(image, {k: v for k, v in clicks.items() if v}, out_dir)
