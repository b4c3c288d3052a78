"""What stays warm between VISTA-3D clicks on one series: a byte-bounded cache, and the point-window plan.

Cached (`ClickCache`, see `window.WindowForward` for who reads what), per window of the image:

- `auto`: the encoder's class-branch features (what the class head reads);
- `low`: the point branch's features after the point head's `feat_downsample` (what the rest of the
  point head reads; the full-resolution point features themselves are not kept);
- `class`: the class head's logits for one class vector (before any point is combined in);
- `out`: the window's whole output for one (class vector, prompt class, points inside the window,
  their labels): a window the new click does not touch is not run at all;
- `pe`: the point head's dense positional encoding for a feature shape (no window);
- `grid`: for every voxel of the original image, the preprocessed voxel its label comes from (the
  inverse resampling, `transforms.original_grid_index`; no window).

Keys. Every entry lives under one *scope*: the image's identity (device, inode, modification time and
size of its files: `vista3d.image_token`, not the path, which changes per request), the weights'
generation (bumped by every `swap_weights`), the preprocessing settings and the window size. A new
scope (another image, the same file rewritten, new weights) drops every entry before anything is
looked up, so nothing computed for one image or one set of weights is ever served for another. Within
a scope an entry is keyed by its kind, the window's (start, stop) per axis in the padded preprocessed
image, and, for `class` and `out`, the exact class values and the exact point coordinates and labels
that reach that window (as floats, after the window's own offset). A different class, a moved, added
or removed point inside a window is a different key; nothing is matched approximately.

Memory. The cache holds at most `max_bytes` of tensors (default 2 GiB), least recently used first out;
an entry larger than the whole budget is not kept. For the full-size `vista3d132` and 128³ windows in
float32 a window costs about 400 MiB (`auto`) + 50 MiB (`low`) + 8 MiB per class (`class`) + 8 MiB per
point set (`out`), `pe` 50 MiB once, and `grid` 4 bytes per original voxel (8 MiB for 128³, 200 MiB
for 512×512×200): the default keeps about four windows' features. The
predictor also keeps the one preprocessed image (the last one asked for). `max_bytes=0` keeps
nothing (the predictor's `reuse=False`): every click is then computed from scratch by the same code.

Windows follow `monai.apps.vista3d.inferer.point_based_window_inferer` (a `roi`-sized window centred
on a point, clamped to the image, zero padding when the image is smaller, averaged where windows
overlap, NaN where none reached) with one change: a point that lies well inside a window already
planned for an earlier point of the same request (at least a quarter window from its edges) shares
that window instead of getting its own. The plan depends only on the request's points, and a click
adds a point to the previous click's list, so the earlier windows of a click are the same windows
as before and come from the cache; nearby clicks add no window at all.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_MAX_BYTES = 2 << 30
WINDOW_KINDS = ("auto", "low", "class", "out")


class ClickCache:
    """Tensors that do not depend on the next click, for one scope (image, weights, preprocessing), LRU by bytes.

    Example:
        >>> cache = ClickCache(max_bytes=1 << 20)
        >>> cache.bind(("image", 1))
        >>> cache.put(("class", ((0, 8),) * 3, (3,)), torch.zeros(8, 8, 8))
        >>> cache.get(("class", ((0, 8),) * 3, (3,))) is not None, cache.hits["class"]
        (True, 1)
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.scope: Hashable | None = None
        self._entries: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()
        self.bytes = 0
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def bind(self, scope: Hashable) -> None:
        """Serve `scope` from now on; every entry of any other scope is dropped first."""
        if scope != self.scope:
            self.clear()
            self.scope = scope

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self.scope = None

    def get(self, key: tuple[Any, ...]) -> Any | None:
        entry = self._entries.get(key) if self.scope is not None else None
        if entry is None:
            self.misses[key[0]] += 1
            return None
        self._entries.move_to_end(key)
        self.hits[key[0]] += 1
        return entry[1]

    def put(self, key: tuple[Any, ...], value: Any) -> Any:
        """Keep `value` (a tensor or a tuple of tensors, detached) under `key`; returns `value`."""
        if self.scope is None:
            return value
        size = _nbytes(value)
        if size > self.max_bytes:
            return value
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[0]
        self._entries[key] = (size, value)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (evicted, _) = self._entries.popitem(last=False)
            self.bytes -= evicted
        return value

    def windows(self) -> set[Hashable]:
        return {key[1] for key in self._entries if key[0] in WINDOW_KINDS}  # type: ignore[index]

    def __len__(self) -> int:
        """Windows of the current image that something is cached for."""
        return len(self.windows())


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    return 0


def window_key(patch_coords: Sequence[Any] | None) -> Hashable | None:
    """(start, stop) per spatial axis of the window a sliding/point inferer passes as `patch_coords`."""
    if not patch_coords:
        return None
    slices = patch_coords[0][-3:]
    return tuple((int(s.start or 0), None if s.stop is None else int(s.stop)) for s in slices)


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
