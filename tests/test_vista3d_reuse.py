"""VISTA-3D click reuse: a sequence of clicks gives the same labels, voxel for voxel, with and without reuse.

The small VISTA3D (32³ windows, random weights: training it would cost more than this test) on 64³
synthetic CTs, so that clicks land in several windows.
Every step is run by a predictor that reuses (`reuse=True`) and by one that computes from scratch
(`reuse=False`, the same code with nothing kept); the outputs must be identical, and the reusing
predictor's counters must show what was reused, so the test fails if reuse silently stops.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcloud.demo.synthetic import ct_affine, synthetic_ct_arrays
from medcloud.families.vista3d import predictor as vista3d
from medcloud.families.vista3d.cache import ClickCache
from medcloud.families.vista3d.demo import make_vista3d_bundle
from medcloud.families.vista3d.predictor import Vista3dPredictor
from medcloud.families.vista3d.window import _one_channel_conv, upscale_and_project


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vista3d_bundle(tmp_path_factory.mktemp("vista3d"), train=False)


def write_ct(path: Path, seed: int) -> tuple[Path, np.ndarray]:
    image, label = synthetic_ct_arrays(seed=seed)
    nib.save(nib.Nifti1Image(image, ct_affine()), str(path))
    return path, label.astype(bool)


def read_labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    return np.frombuffer(path.read_bytes()[-n:], dtype=np.uint8).reshape(shape, order="F")


class Pair:
    """A reusing and a from-scratch predictor on the same weights; `click` runs both and compares."""

    def __init__(self, bundle: Path, out: Path) -> None:
        self.fast, self.slow = Vista3dPredictor(bundle, reuse=True), Vista3dPredictor(bundle, reuse=False)
        self.fast.load()
        self.slow.load()
        self.encoded = 0
        self.fast.network.image_encoder.register_forward_hook(lambda *_: self._count())
        self.out = out
        self.steps = 0

    def _count(self) -> None:
        self.encoded += 1

    def click(self, image: Path, shape: tuple[int, ...], **params: Any) -> np.ndarray:
        self.steps += 1
        [fast] = self.fast.predict(str(image), params, self.out / f"fast{self.steps}")
        [slow] = self.slow.predict(str(image), params, self.out / f"slow{self.steps}")
        got, want = read_labels(fast, shape), read_labels(slow, shape)
        assert np.array_equal(got, want), f"step {self.steps}: {(got != want).sum()} voxels differ"
        return got

    def swap(self, weights: Path) -> None:
        self.fast.swap_weights(weights)
        self.slow.swap_weights(weights)


def counters(p: Vista3dPredictor) -> dict[str, int]:
    return {f"{k}_hit": v for k, v in p.cache.hits.items()} | {f"{k}_miss": v for k, v in p.cache.misses.items()}


def test_clicks_with_reuse_equal_clicks_without(bundle: Path, tmp_path: Path) -> None:
    pair = Pair(bundle, tmp_path)
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=15)
    shape = truth.shape
    c = np.argwhere(truth).mean(0).round().astype(int).tolist()
    near = [c[0] + 2, c[1] - 1, c[2] + 1]
    far = [63 if c[0] < 32 else 0, 63 if c[1] < 32 else 0, c[2]]  # another window
    edge = [c[0], c[1], int(np.argwhere(truth[c[0], c[1]]).max()) + 3]  # just outside the sphere

    first = pair.click(image, shape, label_prompt=[3], points=[c], point_labels=[1])
    assert (first == 3).sum() > 100, "a mask, not an empty one that equals trivially"
    assert pair.encoded == 1 and len(pair.fast.cache) == 1

    before = counters(pair.fast)
    pair.click(image, shape, label_prompt=[3], points=[c, near], point_labels=[1, 1])
    after = counters(pair.fast)
    assert pair.encoded == 1, "a nearby click runs no encoder"
    assert after.get("class_hit", 0) > before.get("class_hit", 0), "class-head logits reused"
    assert after.get("low_hit", 0) > before.get("low_hit", 0), "point features reused"

    before = counters(pair.fast)
    pair.click(image, shape, label_prompt=[3], points=[c, near, far], point_labels=[1, 1, 1])
    after = counters(pair.fast)
    assert pair.encoded == 2, "a far click encodes its own window only"
    assert after.get("out_hit", 0) > before.get("out_hit", 0), "the untouched window served whole"
    assert len(pair.fast.cache) == 2

    clicks = {"points": [c, near, far, edge], "point_labels": [1, 1, 1, 0]}
    pair.click(image, shape, label_prompt=[3], **clicks)  # a background click (its window may be new)
    encoded, before = pair.encoded, counters(pair.fast)
    pair.click(image, shape, label_prompt=[25], **clicks)  # another class (special: labels 2/3), same points
    after = counters(pair.fast)
    assert after.get("auto_hit", 0) > before.get("auto_hit", 0) and pair.encoded == encoded, "encoder reused"
    assert after["class_miss"] > before["class_miss"], "another class runs the class head"
    pair.click(image, shape, label_prompt=[140], **clicks)  # zero-shot: point head only
    pair.click(image, shape, **clicks)  # points only
    before = counters(pair.fast)
    pair.click(image, shape, label_prompt=[3], **clicks)  # back to the first class: served from memory
    assert pair.encoded == encoded and counters(pair.fast)["out_hit"] > before["out_hit"]

    other, truth2 = write_ct(tmp_path / "other.nii.gz", seed=16)  # another image
    pair.click(other, shape, label_prompt=[3], points=[c], point_labels=[1])
    assert pair.encoded == encoded + 1
    time.sleep(0.01)
    write_ct(other, seed=17)  # the same path rewritten: a new image
    pair.click(other, shape, label_prompt=[3], points=[c], point_labels=[1])
    assert pair.encoded == encoded + 2

    pair.click(image, shape, label_prompt=[3], points=[c, near], point_labels=[1, 1])
    encoded = pair.encoded
    state = {k: v * 1.1 if v.is_floating_point() else v for k, v in pair.fast.network.state_dict().items()}
    torch.save(state, tmp_path / "swapped.pt")
    pair.swap(tmp_path / "swapped.pt")
    assert len(pair.fast.cache) == 0
    swapped = pair.click(image, shape, label_prompt=[3], points=[c, near], point_labels=[1, 1])
    assert pair.encoded == encoded + 1, "new weights encode again"
    assert (swapped == 3).sum() > 0
    inside = [c[0] - 2, c[1] + 1, c[2] - 1]
    pair.click(image, shape, label_prompt=[3], points=[c, near, inside], point_labels=[1, 1, 0])
    assert pair.encoded == encoded + 1, "the new weights' features are reused in turn"


def test_predictions_agree_with_monai_forward(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The click path's arithmetic (folded last layer) against `VISTA3D.forward` per window, on labels."""
    image, truth = write_ct(tmp_path / "ct.nii.gz", seed=15)
    c = np.argwhere(truth).mean(0).round().astype(int).tolist()
    predictor = Vista3dPredictor(bundle, reuse=False)
    predictor.load()
    params = [
        {"label_prompt": [3], "points": [c, [c[0] + 2, c[1] - 1, c[2] + 1]], "point_labels": [1, 1]},
        {"points": [c], "point_labels": [1]},
    ]
    ours = [
        read_labels(predictor.predict(str(image), p, tmp_path / f"o{i}")[0], truth.shape) for i, p in enumerate(params)
    ]
    monkeypatch.setattr(vista3d, "WindowForward", lambda network, cache: lambda x, **kw: network(x, **kw))
    for i, p in enumerate(params):
        theirs = read_labels(predictor.predict(str(image), p, tmp_path / f"m{i}")[0], truth.shape)
        assert (ours[i] != theirs).sum() <= 0.0001 * theirs.size  # float rounding at the 0 boundary; 0 measured
        assert (ours[i] > 0).sum() > 0


def test_folded_last_layer_equals_the_product() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 8, 3, padding=1)
    up = torch.nn.Sequential(
        torch.nn.ConvTranspose3d(8, 8, 3, 2, 1, 1), torch.nn.InstanceNorm3d(8), torch.nn.GELU(), conv
    )
    src, hyper = torch.randn(2, 8, 5, 6, 7), torch.randn(2, 1, 8)
    with torch.no_grad():
        full = up(src)
        want = (hyper @ full.reshape(2, 8, -1)).reshape(2, 1, *full.shape[2:])
        torch.testing.assert_close(upscale_and_project(up, src, hyper), want, rtol=1e-4, atol=1e-4)
        x, w, b = torch.randn(8, 9, 10, 11), torch.randn(8, 3, 3, 3), torch.randn(())
        torch.testing.assert_close(_one_channel_conv(x, w, b), F.conv3d(x[None], w[None], b[None], padding=1))


def test_cache_keeps_to_its_byte_budget_and_scope() -> None:
    cache = ClickCache(max_bytes=3 * 4096)
    cache.bind(("image", 1))
    for i in range(5):
        cache.put(("class", (i,), (3,)), torch.zeros(1024))  # 4 KiB each
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    assert cache.get(("class", (0,), (3,))) is None and cache.get(("class", (4,), (3,))) is not None
    cache.put(("auto", (9,)), torch.zeros(10_000))  # larger than the budget: not kept
    assert cache.get(("auto", (9,))) is None
    cache.bind(("image", 2))
    assert len(cache) == 0 and cache.bytes == 0
    off = ClickCache(max_bytes=0)
    off.bind("x")
    off.put(("low", (0,)), torch.zeros(1))
    assert len(off) == 0
