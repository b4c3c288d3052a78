"""Build small, really trained MONAI bundles shaped like the model-zoo ones, and pack or cache them."""

from __future__ import annotations

import json
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandCropByPosNegLabel
from monai.transforms.utils import map_binary_to_indices
from monai.utils import convert_to_tensor

from medcloud.demo import classification_configs, configs, segmentation_configs
from medcloud.demo.build_cache import build_once
from medcloud.demo.determinism import deterministic_training
from medcloud.demo.synthetic import write_demo_dataset, write_synthetic_ct, write_synthetic_rgb

__all__ = [
    "CLASSIFICATION_NAME",
    "PACK_FORMATS",
    "SEGMENTATION_NAME",
    "TRAINING_SEEDS_FROM",
    "ensure_demo_bundles",
    "make_classification_bundle",
    "make_segmentation_bundle",
    "pack_bundle",
    "write_demo_dataset",
]

CLASSIFICATION_NAME = "inbody_classification_demo"
SEGMENTATION_NAME = "spleen_ct_segmentation_demo"
# Training data use seeds from here on; any smaller seed is held out from every demo bundle.
TRAINING_SEEDS_FROM = 1_000_000
PACK_FORMATS: dict[str, str] = {"zip": ".zip", "tar": ".tar", "tar.gz": ".tar.gz"}
# Bump when configs or training change, so old caches are not reused.
_CACHE_KEY = "demo-bundles-v3"  # v3: trained by demo/determinism.py (one thread, deterministic)
Batch = tuple[torch.Tensor, torch.Tensor]


def make_classification_bundle(
    dest: Path, *, name: str = CLASSIFICATION_NAME, train: bool = True, seed: int = 0
) -> Path:
    """Create `dest/<name>`, an endoscopic-inbody-like bundle; trained in process unless `train` is False.

    Example:
        >>> folder = make_classification_bundle(tmp_path)  # doctest: +SKIP
        >>> (folder / "models" / "model.pt").exists()  # doctest: +SKIP
        True
    """
    folder = dest / name
    _write_bundle(
        folder,
        classification_configs.classification_inference(),
        classification_configs.classification_train(),
    )
    _write_rgb_samples(folder)
    parser = _parser(folder, "train.json")
    # The caller's global torch seed stays untouched while the weights are reproducible on any machine.
    with deterministic_training(seed):
        network = parser.get_parsed_content("network_def")
        transform = parser.get_parsed_content("validate#preprocessing")
        metrics = _train_classifier(network, transform, seed) if train else {}
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    _write_json(folder / "configs" / "metadata.json", classification_configs.classification_metadata(metrics))
    return folder


def make_segmentation_bundle(
    dest: Path,
    *,
    name: str = SEGMENTATION_NAME,
    channels: Sequence[int] = (8, 16, 32),
    strides: Sequence[int] = (2, 2),
    roi_size: Sequence[int] = (32, 32, 32),
    num_res_units: int = 1,
    train: bool = True,
    seed: int = 0,
) -> Path:
    """Create `dest/<name>`, a spleen-CT-like bundle with a UNet of the given size; random weights if not `train`.

    `make_segmentation_bundle(d, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), roi_size=(96, 96, 96),
    num_res_units=2, train=False)` gives the full-size spleen network for benchmarks.
    """
    folder = dest / name
    network_def = segmentation_configs.unet_def(channels, strides, num_res_units)
    inference = segmentation_configs.segmentation_inference(network_def, roi_size)
    _write_bundle(folder, inference, segmentation_configs.segmentation_train(network_def, roi_size))
    sample = folder / "sample_data"
    write_synthetic_ct(sample / "imagesTs" / "ct_sample.nii.gz", sample / "labelsTs" / "ct_sample.nii.gz", seed=7)
    parser = _parser(folder, "train.json")
    with deterministic_training(seed):
        network = parser.get_parsed_content("network_def")
        transform = parser.get_parsed_content("validate#preprocessing")
        metrics = _train_segmenter(network, transform, roi_size, seed) if train else {}
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    _write_json(folder / "configs" / "metadata.json", segmentation_configs.segmentation_metadata(roi_size, metrics))
    return folder


def pack_bundle(folder: Path, out_dir: Path, fmt: str = "zip") -> Path:
    """Pack `folder` into `out_dir/<name>.zip|.tar|.tar.gz` whose members all sit under `<name>/`."""
    if fmt not in PACK_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(PACK_FORMATS)}, got {fmt!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{folder.name}{PACK_FORMATS[fmt]}"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    else:
        with tarfile.open(archive, "w:gz" if fmt == "tar.gz" else "w") as tf:
            for path in files:
                tf.add(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return archive


def ensure_demo_bundles(cache_dir: Path) -> dict[str, Path]:
    """Build both trained demo bundles into `cache_dir` once; later calls (and racing processes) reuse them."""

    def build(folder: Path) -> None:
        make_classification_bundle(folder)
        make_segmentation_bundle(folder)

    ready = build_once(cache_dir, _CACHE_KEY, build)
    return {"classification": ready / CLASSIFICATION_NAME, "segmentation": ready / SEGMENTATION_NAME}


# ---------------------------------------------------------------- bundle files


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4) + "\n")


def _write_bundle(folder: Path, inference: dict[str, Any], train: dict[str, Any]) -> None:
    _write_json(folder / "configs" / "inference.json", inference)
    _write_json(folder / "configs" / "train.json", train)
    (folder / "configs" / "logging.conf").write_text(configs.LOGGING_CONF)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "LICENSE").write_text("Apache-2.0: a synthetic demo bundle generated by medcloud.\n")


def _parser(folder: Path, config: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(folder / "configs" / config)
    parser["bundle_root"] = str(folder)
    return parser


def _write_rgb_samples(folder: Path) -> None:
    samples = []
    for i in range(6):
        relative = f"sample_data/{'inbody' if i % 2 == 0 else 'outbody'}_{i}.png"
        write_synthetic_rgb(folder / relative, label=i % 2, seed=i + 1)
        samples.append({"image": relative, "label": i % 2})
    _write_json(folder / "label" / "train_samples.json", samples[:4])
    _write_json(folder / "label" / "val_samples.json", samples[4:])
    _write_json(folder / "label" / "test_samples.json", samples[4:])


# ---------------------------------------------------------------- in-process training


def _fit(
    network: torch.nn.Module, loss: torch.nn.Module, next_batch: Callable[[], Batch], steps: int, lr: float
) -> None:
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    # A late drop of the learning rate settles BatchNorm statistics and weights for evaluation.
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(steps * 0.7)], gamma=0.1)
    network.train()
    for _ in range(steps):
        images, targets = next_batch()
        optimizer.zero_grad()
        loss(network(images), targets).backward()
        optimizer.step()
        scheduler.step()
    network.eval()


def _rgb_set(tmp: Path, transform: Compose, first_seed: int, count: int) -> Batch:
    images, labels = [], []
    for seed in range(first_seed, first_seed + count):
        label = seed % 2
        path = write_synthetic_rgb(tmp / f"{seed}.png", label=label, seed=seed)
        images.append(transform({"image": str(path), "label": label})["image"].as_tensor())
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def _train_classifier(network: torch.nn.Module, transform: Compose, seed: int) -> dict[str, float]:
    first = TRAINING_SEEDS_FROM + 10_000 * seed
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = _rgb_set(Path(tmp), transform, first, 64)
        check_images, check_labels = _rgb_set(Path(tmp), transform, first + 64, 32)
    rng = np.random.RandomState(seed)

    def next_batch() -> Batch:
        pick = torch.from_numpy(rng.choice(len(images), 16, replace=False))
        flip = [d for d, p in ((2, 0.5), (3, 0.5)) if rng.rand() < p]
        return images[pick].flip(flip) if flip else images[pick], labels[pick]

    _fit(network, torch.nn.CrossEntropyLoss(), next_batch, steps=100, lr=3e-3)
    with torch.no_grad():
        accuracy = (network(check_images).argmax(1) == check_labels).float().mean().item()
    return {"accuracy": round(accuracy, 4)}


def _ct_set(tmp: Path, transform: Compose, first_seed: int, count: int) -> list[Batch]:
    volumes = []
    for seed in range(first_seed, first_seed + count):
        image, label = write_synthetic_ct(tmp / f"{seed}.nii.gz", tmp / f"{seed}_label.nii.gz", seed=seed)
        item = transform({"image": str(image), "label": str(label)})
        volumes.append((item["image"].as_tensor(), item["label"].as_tensor()))
    return volumes


def _train_segmenter(
    network: torch.nn.Module, transform: Compose, roi_size: Sequence[int], seed: int
) -> dict[str, float]:
    first = TRAINING_SEEDS_FROM + 10_000 * seed
    with tempfile.TemporaryDirectory() as tmp:
        volumes = _ct_set(Path(tmp), transform, first, 6)
        checks = _ct_set(Path(tmp), transform, first + 6, 2)
    rng = np.random.RandomState(seed)
    cropper = RandCropByPosNegLabel(spatial_size=list(roi_size), pos=1, neg=1, num_samples=4, allow_smaller=True)
    cropper.set_random_state(seed)
    indices = [map_binary_to_indices(label, None, 0) for _, label in volumes]

    def next_batch() -> Batch:
        i = rng.randint(len(volumes))
        fg, bg = indices[i]
        # Image and label are stacked as channels so that one crop cuts both at the same place.
        crops = cropper(torch.cat(volumes[i]), label=volumes[i][1], fg_indices=fg, bg_indices=bg)
        both = torch.stack([convert_to_tensor(c, track_meta=False) for c in crops])
        return both[:, :1], both[:, 1:]

    _fit(network, DiceCELoss(to_onehot_y=True, softmax=True), next_batch, steps=80, lr=1e-2)
    dice = np.mean([_dice(network, image, label, roi_size) for image, label in checks])
    return {"mean_dice": round(float(dice), 4)}


def _dice(network: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, roi_size: Sequence[int]) -> float:
    with torch.no_grad():
        logits = sliding_window_inference(image[None], list(roi_size), 4, network, overlap=0.25)
    pred = torch.as_tensor(logits).argmax(1)[0] > 0
    truth = label[0] > 0
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp(min=1))
