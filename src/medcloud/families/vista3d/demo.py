"""A VISTA-3D bundle in the official layout: a small VISTA3D trained briefly on synthetic CT, or the full-size net.

The small network is the ENVIRONMENT recipe (SegResNetDS2 with 8 filters, ~0.2 M parameters). It
learns, in well under a minute on two CPU cores, that class 3 ("spleen") is the bright sphere of
`medcloud.demo.synthetic` and that a positive click selects the sphere under it. Training patches
come through the predictor's own preprocessing, so train and serve see the same images.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceLoss

from medcloud.demo.build_cache import build_once
from medcloud.demo.determinism import deterministic_training
from medcloud.demo.synthetic import _save_nifti, synthetic_ct_arrays
from medcloud.families.vista3d.family import vista3d_labels
from medcloud.families.vista3d.patches import sample_clicks, training_batch
from medcloud.families.vista3d.transforms import PreprocessSettings, preprocessing

__all__ = ["SMALL_NETWORK_DEF", "SPLEEN", "ensure_demo_vista3d", "make_vista3d_bundle", "vista3d_inference_config"]

SPLEEN = 3
TRAIN_SEEDS_FROM = 1_000_000 + 30_000  # the demo's training seeds; smaller seeds are held out
SMALL_NETWORK_DEF: dict[str, Any] = {
    "_target_": "monai.networks.nets.vista3d.VISTA3D",
    "image_encoder": {
        "_target_": "monai.networks.nets.segresnet_ds.SegResNetDS2",
        "in_channels": "@input_channels",
        "blocks_down": [1, 1, 1],
        "norm": "instance",
        "out_channels": 8,
        "init_filters": 8,
        "dsdepth": 1,
    },
    "class_head": {
        "_target_": "monai.networks.nets.vista3d.ClassMappingClassify",
        "n_classes": 512,
        "feature_size": 8,
        "use_mlp": True,
    },
    "point_head": {
        "_target_": "monai.networks.nets.vista3d.PointMappingSAM",
        "feature_size": 8,
        "n_classes": 512,
        "last_supported": 132,
    },
}
FULL_NETWORK_DEF = "$monai.networks.nets.vista3d132(in_channels=@input_channels)"
_PRE = PreprocessSettings()
# Bump when the network, its training or the bundle's files change, so old caches are not reused.
_CACHE_KEY = "demo-vista3d-v2"  # v2: trained by demo/determinism.py


def vista3d_inference_config(network_def: Any, patch_size: tuple[int, int, int]) -> dict[str, Any]:
    """The official `configs/inference.json` keys a predictor reads (no `scripts` package needed)."""
    return {
        "imports": ["$import glob", "$import os", "$import numpy as np", "$import json", "$import pathlib"],
        "bundle_root": "./",
        "image_key": "image",
        "everything_labels": "$list(set([i+1 for i in range(132)]) - set([2,16,18,20,21,23,24,25,26,27,128,129,"
        "130,131,132]))",
        "metadata_path": "$@bundle_root + '/configs/metadata.json'",
        "subclass": {
            "2": [14, 5],
            "20": [28, 29, 30, 31, 32],
            "21": "$list(range(33, 57)) + list(range(63, 98)) + [114, 120, 122]",
        },
        "input_channels": 1,
        "resample_spacing": list(_PRE.spacing),
        "sw_batch_size": 1,
        "patch_size": list(patch_size),
        "overlap": 0.3,
        "use_point_window": True,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing_transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "EnsureTyped", "keys": "@image_key", "device": "@device", "track_meta": True},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@resample_spacing", "mode": "bilinear"},
            {
                "_target_": "CropForegroundd",
                "keys": "@image_key",
                "allow_smaller": True,
                "margin": _PRE.crop_margin,
                "source_key": "@image_key",
            },
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "@image_key",
                "a_min": _PRE.a_min,
                "a_max": _PRE.a_max,
                "b_min": 0,
                "b_max": 1,
                "clip": True,
            },
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "CastToTyped", "keys": "@image_key", "dtype": "$torch.float32"},
        ],
        "inferer": {
            "roi_size": "@patch_size",
            "overlap": "@overlap",
            "sw_batch_size": "@sw_batch_size",
            "use_point_window": "@use_point_window",
        },
    }


def vista3d_metadata(patch_size: tuple[int, int, int], description: str) -> dict[str, Any]:
    """The official metadata's `network_data_format` with its 132-class channel_def (names as spelled there)."""
    version, lowercase = vista3d_labels()
    labels = {k: n[:10] + n[10:].upper() if n.startswith("vertebrae ") else n for k, n in lowercase.items()}
    shape = list(patch_size)
    return {
        "version": version,
        "name": "VISTA3D",
        "task": "CT segmentation with class and point prompts",
        "description": description,
        "authors": "medcloud (architecture: MONAI team)",
        "copyright": "Copyright (c) MONAI Consortium",
        "data_type": "nibabel",
        "image_classes": "1 channel data, intensity scaled to [0, 1]",
        "label_classes": "single channel data",
        "pred_classes": "2 channels OneHot data",
        "intended_use": "This is an example, not to be used for diagnostic purposes",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 1,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "background", **labels},
                }
            },
        },
    }


def make_vista3d_bundle(
    dest: Path,
    *,
    name: str = "vista3d_small",
    train: bool = True,
    seed: int = 0,
    full_size: bool = False,
    steps: int = 150,
) -> Path:
    """Write `dest/<name>` in the official layout and return it.

    The small network (default) is trained for `steps` patches when `train`; `full_size=True` writes
    `vista3d132` (218 M parameters, random weights, 128³ windows) for benchmarks and cannot be trained here.
    """
    if full_size and train:
        raise ValueError("full_size=True writes random weights: pass train=False")
    folder = dest / name
    patch = (128, 128, 128) if full_size else (32, 32, 32)
    config = vista3d_inference_config(FULL_NETWORK_DEF if full_size else SMALL_NETWORK_DEF, patch)
    what = "full-size VISTA3D with random weights" if full_size else "small VISTA3D trained on synthetic CT"
    _write_json(folder / "configs" / "inference.json", config)
    _write_json(folder / "configs" / "metadata.json", vista3d_metadata(patch, f"medcloud demo: {what}."))
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "LICENSE").write_text("Apache-2.0: a demo VISTA-3D bundle generated by medcloud.\n")
    parser = ConfigParser(config)
    parser["bundle_root"] = str(folder)
    with deterministic_training(seed):
        network = parser.get_parsed_content("network_def")
        if train:
            train_small_vista3d(network, seed=seed, steps=steps)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def ensure_demo_vista3d(cache_dir: Path) -> Path:
    """The small trained VISTA-3D bundle, built into `cache_dir` once; later calls (and racing processes) reuse it."""
    ready = build_once(cache_dir, _CACHE_KEY, lambda folder: make_vista3d_bundle(folder, train=True))
    return ready / "vista3d_small"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4) + "\n")


# ---------------------------------------------------------------- training


def training_volumes(seed: int, count: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocessed (image, label) pairs [1, H, W, D] of synthetic CTs with varied spacing and axis flips."""
    rs = np.random.RandomState(seed)
    pairs = []
    transform = preprocessing(_PRE, keys=("image", "label"), modes=("bilinear", "nearest"))
    with tempfile.TemporaryDirectory(prefix="vista3d-train-") as tmp:
        for i in range(count):
            image, label = synthetic_ct_arrays(seed=TRAIN_SEEDS_FROM + seed * 100 + i, num_objs=1 + i % 3)
            spacing = rs.uniform(0.8, 2.5, size=3)
            affine = np.diag([*(spacing * rs.choice([-1, 1], size=3)), 1.0])
            paths = {k: Path(tmp) / f"{k}_{i}.nii.gz" for k in ("image", "label")}
            _save_nifti(image, affine, paths["image"])
            _save_nifti(label.astype(np.float32), affine, paths["label"])
            data = transform({k: str(p) for k, p in paths.items()})
            pairs.append((data["image"].as_tensor(), (data["label"].as_tensor() > 0.5).float()))
    return pairs


def train_small_vista3d(network: torch.nn.Module, *, seed: int = 0, steps: int = 150, patch: int = 32) -> None:
    """Train both heads on random patches: class 3 = the spheres, another class = nothing, clicks = their sphere."""
    rs = np.random.RandomState(seed)
    volumes = training_volumes(seed)
    dice, bce = DiceLoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(network.parameters(), lr=5e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=steps, pct_start=0.15)
    network.train()
    for _ in range(steps):
        x, y = training_batch(volumes, patch, rs)
        out, out_auto = network.image_encoder(x, with_point=True, with_label=True)
        other = int(rs.choice([c for c in range(1, 133) if c != SPLEEN]))
        logits, _ = network.class_head(out_auto, torch.tensor([[SPLEEN], [other]]))
        target = torch.stack([y[:, 0], torch.zeros_like(y[:, 0])])
        loss = dice(logits, target) + bce(logits, target)
        if y[0].any():  # two click sets on the same patch: two objects for the point head, one encoder pass
            points, labels = sample_clicks(y[0, 0], rs)
            point_logits = network.point_head(out[:1], points, labels, class_vector=torch.tensor([[SPLEEN]] * 2))
            loss = (
                loss
                + dice(point_logits, y[:1].expand(2, -1, -1, -1, -1))
                + bce(point_logits, y[:1].expand(2, -1, -1, -1, -1))
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    network.eval()
