"""Point windows that stay warm between clicks: the window plan and the encoder output cached per window.

Windows follow `monai.apps.vista3d.inferer.point_based_window_inferer` (a `roi`-sized window centred
on a point, clamped to the image, zero padding when the image is smaller, averaged where windows
overlap, NaN where none reached) with one change: a point that lies well inside a window already
planned for an earlier point of the same request (at least a quarter window from its edges) shares
that window instead of getting its own. The plan depends only on the request's points, and a click
adds a point to the previous click's list, so the earlier windows of a click are the same windows
as before and come from the cache; nearby clicks add no window at all.

MONAI's own cache (`VISTA3D.image_embeddings` with `keep_cache=True`) holds one tensor whatever the
window, and is consulted only when no class vector is given. A click request of the official
bundle usually has a class (`label_prompt: [3]` plus points, where both heads run) and a request
with several points runs one window per point, so that single tensor would be stale or unused.
This cache keys the encoder output by (image, window) instead: a window it has seen for the same
image (same file, same modification time, same preprocessing) is never encoded again, and a new
image, new weights or a window it has not seen always is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Outputs = tuple[Any, Any]  # (point-branch features, class-branch features) from SegResNetDS2


class EncoderCache:
    """Encoder outputs of the most recent point windows of one image."""

    def __init__(self, max_windows: int = 4) -> None:
        self.max_windows = max_windows
        self.image: Hashable | None = None
        self._entries: OrderedDict[Hashable, tuple[bool, bool, Outputs]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def bind(self, image: Hashable) -> None:
        """Serve `image` from now on; the windows of any other image are dropped."""
        if image != self.image:
            self.clear()
            self.image = image

    def clear(self) -> None:
        self._entries.clear()
        self.image = None

    def lookup(self, window: Hashable, with_point: bool, with_label: bool) -> Outputs | None:
        entry = self._entries.get(window)
        if entry is None or (with_point and not entry[0]) or (with_label and not entry[1]):
            self.misses += 1
            return None
        self._entries.move_to_end(window)
        self.hits += 1
        return entry[2]

    def store(self, window: Hashable, with_point: bool, with_label: bool, outputs: Outputs) -> None:
        detached = tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in outputs)
        self._entries[window] = (with_point, with_label, detached)  # type: ignore[assignment]
        self._entries.move_to_end(window)
        while len(self._entries) > self.max_windows:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class _CachedEncoder(nn.Module):
    """Stands in for `network.image_encoder` during one window's forward pass."""

    def __init__(self, encoder: nn.Module, cache: EncoderCache, window: Hashable) -> None:
        super().__init__()
        object.__setattr__(self, "encoder", encoder)  # not a submodule: the network's state stays as it was
        self.cache = cache
        self.window = window

    def forward(self, x: torch.Tensor, with_point: bool = True, with_label: bool = True) -> Outputs:
        hit = self.cache.lookup(self.window, with_point, with_label)
        if hit is not None:
            return hit
        outputs = self.encoder(x, with_point=with_point, with_label=with_label)  # type: ignore[operator]
        self.cache.store(self.window, with_point, with_label, outputs)
        return outputs


def window_key(patch_coords: Sequence[Any] | None) -> Hashable | None:
    """(start, stop) per spatial axis of the window a sliding/point inferer passes as `patch_coords`."""
    if not patch_coords:
        return None
    slices = patch_coords[0][-3:]
    return tuple((int(s.start or 0), None if s.stop is None else int(s.stop)) for s in slices)


def caching_predictor(network: nn.Module, cache: EncoderCache) -> Callable[..., torch.Tensor]:
    """A predictor for MONAI's inferers that runs `network` with the encoder served from `cache`."""

    def predict(x: torch.Tensor, patch_coords: Sequence[Any] | None = None, **kwargs: Any) -> torch.Tensor:
        window = window_key(patch_coords)
        if window is None or cache.image is None:
            return network(x, patch_coords=patch_coords, **kwargs)
        encoder = network.image_encoder
        network.image_encoder = _CachedEncoder(encoder, cache, window)  # type: ignore[assignment]
        try:
            return network(x, patch_coords=patch_coords, **kwargs)
        finally:
            network.image_encoder = encoder

    return predict


Window = tuple[slice, slice, slice]


def plan_windows(points: np.ndarray, roi: Sequence[int], shape: Sequence[int], share: float = 0.25) -> list[Window]:
    """One window per point, centred and clamped as MONAI does, unless an earlier window already holds it well."""
    windows: list[Window] = []
    for point in np.asarray(points, dtype=float).reshape(-1, 3):
        if not any(_holds(w, point, roi, share) for w in windows):
            windows.append(tuple(_centred(p, r, s) for p, r, s in zip(point, roi, shape, strict=True)))  # type: ignore[misc]
    return windows


def _holds(window: Window, point: np.ndarray, roi: Sequence[int], share: float) -> bool:
    return all(w.start + r * share <= p < w.stop - r * share for w, p, r in zip(window, point, roi, strict=True))


def _centred(p: float, roi: int, size: int) -> slice:
    """`monai.apps.vista3d.inferer._get_window_idx_c`."""
    if p - roi // 2 < 0:
        return slice(0, roi)
    if p + roi // 2 > size:
        return slice(size - roi, size)
    return slice(int(p) - roi // 2, int(p) + roi // 2)


def point_window_inference(
    inputs: torch.Tensor,
    roi: Sequence[int],
    predictor: Callable[..., torch.Tensor],
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    **kwargs: Any,
) -> torch.Tensor:
    """Logits [1, B, H, W, D] of `predictor` over the planned windows; NaN where no window reached."""
    pad = [0, 0, 0, 0, 0, 0]  # F.pad order: last axis first
    for axis in range(3):
        diff = max(int(roi[axis]) - inputs.shape[2 + axis], 0)
        pad[4 - 2 * axis], pad[5 - 2 * axis] = diff // 2, diff - diff // 2
    image = F.pad(inputs, pad) if any(pad) else inputs
    coords = point_coords + torch.tensor([pad[4], pad[2], pad[0]], device=point_coords.device)
    total: torch.Tensor | None = None
    count = torch.zeros(image.shape[2:], device=image.device)
    for window in plan_windows(coords[0].cpu().numpy(), roi, image.shape[2:]):
        index = (slice(None), slice(None), *window)
        output = predictor(image[index], point_coords=coords, point_labels=point_labels, patch_coords=[index], **kwargs)
        if total is None:
            total = torch.zeros((1, output.shape[1], *image.shape[2:]), device=image.device)
        total[index] += output.to(total.device, total.dtype)
        count[window] += 1
    assert total is not None, "no point, no window"
    total = total / count  # 0/0 = NaN where no window reached
    h, w, d = image.shape[2:]
    return total[:, :, pad[4] : h - pad[5], pad[2] : w - pad[3], pad[0] : d - pad[1]]
