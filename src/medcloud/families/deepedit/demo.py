"""A small DeepEdit bundle in the official `spleen_deepedit_annotation` layout, trained briefly on synthetic CT.

The bundle's files are the model zoo's own (`official/`, copied unchanged) with `SMALL_OVERRIDES`
applied: a 32³ `spatial_size`, a smaller DynUNet (same `in_channels`/`out_channels` expressions), few
epochs and no loader workers. The synthetic task makes clicks matter: each CT has one or two bright
"spleen" blobs (label 1) and one or two darker "ambiguous" blobs (label 0). Trained with simulated
clicks, the network segments the bright blobs when given no clicks, adds an ambiguous blob when it gets
a "spleen" click and drops a bright blob when it gets a "background" click. Training samples go through
the bundle's own preprocessing (its `scripts.transforms` and MONAI's DeepEdit click transforms), so
training and serving see the same input channels.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Resized
from scipy import ndimage

from medcloud.demo.build_cache import build_once
from medcloud.demo.determinism import deterministic_training
from medcloud.demo.synthetic import ct_affine, save_ct_image, save_label

__all__ = [
    "OFFICIAL",
    "SMALL_OVERRIDES",
    "DeepEditVolume",
    "deepedit_ct_volume",
    "ensure_demo_deepedit",
    "make_deepedit_bundle",
]

OFFICIAL = Path(__file__).parent / "official"
SPATIAL_SIZE = [32, 32, 32]
_NETWORK = {
    "kernel_size": [3, 3, 3, 3],
    "strides": [1, 2, 2, 2],
    "upsample_kernel_size": [2, 2, 2],
    "filters": [4, 8, 16, 32],
    "res_block": False,
}
_SHAPE = {"network_data_format#inputs#image#spatial_shape": SPATIAL_SIZE}
# What differs from the model zoo's files: only size, depth and run length ("#" paths as in MONAI configs).
SMALL_OVERRIDES: dict[str, dict[str, Any]] = {
    "inference.json": {
        "spatial_size": SPATIAL_SIZE,
        "dataloader#num_workers": 0,
        **{f"network_def#{k}": v for k, v in _NETWORK.items()},
    },
    "train.json": {
        "spatial_size": SPATIAL_SIZE,
        "epochs": 4,
        "train#dataset#num_workers": 1,
        "validate#dataset#num_workers": 1,
        **{f"network_def#{k}": v for k, v in _NETWORK.items()},
    },
    "metadata.json": {**_SHAPE, "network_data_format#outputs#pred#spatial_shape": SPATIAL_SIZE},
}
LABEL_NAMES = {"spleen": 1, "background": 0}
SHAPE = (48, 48, 40)
TRAIN_SEEDS_FROM = 2_000_000  # the demo's training volumes; smaller seeds are held out for tests
ORGAN_HU, AMBIGUOUS_HU, BODY_HU, AIR_HU, NOISE_HU = 140.0, 45.0, 0.0, -800.0, 12.0
# Bump when the files, the network, the synthetic task or the training change, so old caches are not reused.
_CACHE_KEY = "demo-deepedit-v5"  # v5: trained by demo/determinism.py


# ---------------------------------------------------------------- the bundle


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("#")
    node: Any = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value


def write_small_configs(folder: Path) -> None:
    """Copy the official configs, scripts, docs and licence into `folder`, with `SMALL_OVERRIDES` applied."""
    for sub in ("scripts", "docs"):
        shutil.copytree(OFFICIAL / sub, folder / sub, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(OFFICIAL / "LICENSE", folder / "LICENSE")
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    for source in sorted((OFFICIAL / "configs").iterdir()):
        if source.suffix != ".json":
            shutil.copy(source, folder / "configs" / source.name)
            continue
        config = json.loads(source.read_text())
        for path, value in SMALL_OVERRIDES.get(source.name, {}).items():
            _set(config, path, copy.deepcopy(value))
        (folder / "configs" / source.name).write_text(json.dumps(config, indent=4) + "\n")


def make_deepedit_bundle(
    dest: Path,
    *,
    name: str = "deepedit_small",
    train: bool = True,
    seed: int = 0,
    steps: int = 200,
    volumes: int = 16,
    batch: int = 2,
) -> Path:
    """Write `dest/<name>` in the official layout and return it; `train` fits the weights for `steps` batches."""
    from medcloud.families.deepedit.predictor import bundle_scripts_importable

    folder = dest / name
    write_small_configs(folder)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    meta["description"] = "medcloud demo: a small DeepEdit (DynUNet) trained briefly on synthetic CT."
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    bundle_scripts_importable(folder)
    parser = ConfigParser(json.loads((folder / "configs" / "inference.json").read_text()))
    parser["bundle_root"] = str(folder)
    with deterministic_training(seed):
        network = parser.get_parsed_content("network_def")
        if train:
            train_small_deepedit(network, parser, seed=seed, steps=steps, volumes=volumes, batch=batch)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def ensure_demo_deepedit(folder: Path) -> Path:
    """The small trained DeepEdit bundle, built into `folder` once; later calls (and racing processes) reuse it."""
    ready = build_once(folder, _CACHE_KEY, lambda tmp: make_deepedit_bundle(tmp, train=True))
    return ready / "deepedit_small"


# ---------------------------------------------------------------- synthetic CT


@dataclass
class DeepEditVolume:
    """One synthetic CT: HU image, blob ids per voxel, which ids are "spleen" and which are ambiguous."""

    image: np.ndarray  # float32 HU
    components: np.ndarray  # uint8, 0 = no blob, n = blob n
    organs: list[int]
    ambiguous: list[int]
    affine: np.ndarray

    @property
    def label(self) -> np.ndarray:
        """The automatic-mode truth: the bright blobs, 1; everything else 0."""
        return np.isin(self.components, self.organs).astype(np.uint8)

    def inside(self, blob: int, rs: np.random.RandomState | None = None) -> list[int]:
        """A voxel well inside `blob` (its deepest voxel, or a random one at least 2 voxels from its edge)."""
        depth = ndimage.distance_transform_edt(self.components == blob)
        if rs is None:
            return [int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape)]
        candidates = np.argwhere(depth >= min(2.0, float(depth.max())))
        return [int(v) for v in candidates[rs.randint(len(candidates))]]

    def save(self, image_path: Path, label_path: Path | None = None) -> Path:
        """Write the image (and optionally the automatic-mode label) as NIfTI; return the image path."""
        save_ct_image(self.image, self.affine, image_path)
        if label_path is not None:
            save_label(self.label, self.affine, label_path)
        return image_path


def deepedit_ct_volume(
    seed: int, shape: tuple[int, int, int] = SHAPE, *, organs: int | None = None, ambiguous: int | None = None
) -> DeepEditVolume:
    """A synthetic CT (LPS-like affine) with `organs` bright and `ambiguous` darker ellipsoids in a body of soft tissue."""
    rs = np.random.RandomState(seed)
    organs = int(rs.randint(1, 3)) if organs is None else organs
    ambiguous = int(rs.randint(1, 3)) if ambiguous is None else ambiguous
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    body = ((grid[0] - centre[0]) / (0.48 * shape[0])) ** 2 + ((grid[1] - centre[1]) / (0.45 * shape[1])) ** 2 <= 1
    image = np.where(body, BODY_HU, AIR_HU).astype(np.float32)
    components = np.zeros(shape, dtype=np.uint8)
    placed: list[tuple[np.ndarray, float]] = []
    for blob in range(1, organs + ambiguous + 1):
        radii = rs.uniform(5.0, 8.0) * rs.uniform(0.8, 1.2, size=3)
        for _ in range(500):
            where = np.array([rs.uniform(r + 2, n - r - 3) for r, n in zip(radii, shape, strict=True)])
            offset = (where[:2] - centre[:2]) / (np.array([0.48, 0.45]) * np.array(shape[:2]))
            if (offset**2).sum() < 0.55 and all(np.linalg.norm(where - c) > radii.max() + r + 3 for c, r in placed):
                break
        placed.append((where, float(radii.max())))
        mask = sum(((grid[a] - where[a]) / radii[a]) ** 2 for a in range(3)) <= 1
        components[mask] = blob
        image[mask] = (ORGAN_HU if blob <= organs else AMBIGUOUS_HU) + rs.uniform(-10, 10)
    image = ndimage.gaussian_filter(image, 0.7) + rs.normal(0, NOISE_HU, size=shape).astype(np.float32)
    ids = list(range(1, organs + ambiguous + 1))
    return DeepEditVolume(image.astype(np.float32), components, ids[:organs], ids[organs:], ct_affine())


# ---------------------------------------------------------------- training


def sample_clicks(volume: DeepEditVolume, rs: np.random.RandomState) -> tuple[dict[str, list[list[int]]], set[int]]:
    """Simulated clicks on one volume and the blobs the answer should then hold.

    Two in five automatic (no clicks); otherwise a "spleen" click adds an ambiguous blob or a "background"
    click removes a bright one, sometimes both, with confirming clicks (a kept blob, the body, the rim just
    outside a kept blob, where DeepEdit's own simulated clicks in `train.json` land) now and then.
    """
    target, clicks = set(volume.organs), {"spleen": [], "background": []}
    u = rs.rand()
    if u < 0.4:
        return {}, target
    flips = [("spleen", rs.choice(volume.ambiguous))] if u < 0.7 or not volume.organs else []
    if not flips or rs.rand() < 0.25:
        flips.append(("background", rs.choice(volume.organs)))
    for name, blob in flips:
        for _ in range(1 + int(rs.rand() < 0.3)):
            clicks[name].append(volume.inside(int(blob), rs))
        (target.add if name == "spleen" else target.discard)(int(blob))
    if rs.rand() < 0.3 and target & set(volume.organs):
        clicks["spleen"].append(volume.inside(int(rs.choice(sorted(target & set(volume.organs)))), rs))
    if rs.rand() < 0.3:
        free = np.argwhere((volume.components == 0) & (volume.image > -200))
        clicks["background"].append([int(v) for v in free[rs.randint(len(free))]])
    kept = sorted(target & set(volume.organs))
    if kept and rs.rand() < 0.35:  # DeepEdit's own simulated clicks fix boundaries: one just outside keeps the blob
        blob = volume.components == int(rs.choice(kept))
        rim = np.argwhere(ndimage.binary_dilation(blob, iterations=2) & (volume.components == 0))
        clicks["background"].append([int(v) for v in rim[rs.randint(len(rim))]])
    return {k: v for k, v in clicks.items() if v}, target


def _prepared(parser: ConfigParser, seed: int, tmp: Path) -> tuple[DeepEditVolume, dict[str, Any], torch.Tensor]:
    """A training volume through the bundle's `preprocessing_transforms`, and its blob ids on the network's grid."""
    volume = deepedit_ct_volume(seed)
    image = volume.save(tmp / f"image_{seed}.nii.gz")
    save_label(volume.components, volume.affine, tmp / f"blobs_{seed}.nii.gz")
    loaded = Compose(parser.get_parsed_content("preprocessing_transforms"))({"image": str(image)})
    blobs = Compose(
        [
            LoadImaged("label", reader="ITKReader"),
            EnsureChannelFirstd("label"),
            Orientationd("label", axcodes="RAS"),
            Resized("label", spatial_size=SPATIAL_SIZE, mode="nearest"),
        ]
    )({"label": str(tmp / f"blobs_{seed}.nii.gz")})["label"]
    return volume, loaded, blobs.as_tensor().round().long()


def train_small_deepedit(
    network: torch.nn.Module,
    parser: ConfigParser,
    *,
    seed: int = 0,
    steps: int = 200,
    volumes: int = 16,
    batch: int = 2,
) -> None:
    """Fit `network` on synthetic volumes with simulated clicks, through the bundle's own click transforms."""
    rs = np.random.RandomState(seed)
    clicks_to_input = Compose(
        parser.get_parsed_content("deepedit_transforms") + parser.get_parsed_content("extra_transforms")
    )
    with tempfile.TemporaryDirectory(prefix="deepedit-train-") as tmp:
        data = [_prepared(parser, TRAIN_SEEDS_FROM + seed * 100 + i, Path(tmp)) for i in range(volumes)]
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps, pct_start=0.2)
    network.train()
    for _ in range(steps):
        inputs, targets = [], []
        for index in rs.choice(len(data), size=batch, replace=False):
            volume, loaded, blobs = data[index]
            clicks, target = sample_clicks(volume, rs)
            item = clicks_to_input({**copy.deepcopy(loaded), **clicks})
            inputs.append(torch.as_tensor(item["image"]).float())
            targets.append(torch.isin(blobs, torch.tensor(sorted(target), dtype=torch.long)).float())
        loss = loss_function(network(torch.stack(inputs)), torch.stack(targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    network.eval()
