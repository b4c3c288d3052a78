"""One point window of VISTA-3D, computed in parts so that a click reruns only what depends on it.

`WindowForward` is what `VISTA3D.forward` does for one window of `point_window_inference` (MONAI 1.6:
`patch_coords` given, no labels, no previous mask, `transpose=True`), written out step by step:

1. the request's points that fall inside the window (`update_point_to_patch`), padding points dropped;
2. the image encoder (`SegResNetDS2`), for the branches still needed;
3. the class head on the class-branch features, for the class vector;
4. the point head on the point-branch features, for the window's points;
5. `connected_components_combine` of class and point logits (or the point logits alone).

Steps 2 and 3, and the first layers of the point head (`feat_downsample`, which reads only the image
features), do not depend on the click: they are served from `ClickCache` (`cache`, where the
keys and the memory bound are described). A window whose class and points are the same as in an
earlier click is served whole. What a new click pays for is the rest of the point head (the
two-way transformer and the upscaling) and step 5, in the windows it touches.

The point head's last layer is a 3³ convolution to C channels followed by a product with the
per-click hypernetwork vector h (`mask = h · conv(x)`). That product is linear, so it is folded into
the convolution: one output channel with weights `Σ_c h_c W_c` and bias `Σ_c h_c b_c`, a C-fold
(48-fold for `vista3d132`) cheaper convolution at full window resolution. The same arithmetic in
another order: logits agree with MONAI's to float rounding (about 1e-6 relative), and this code path
is used with and without reuse, so reuse itself changes no bit of the output.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medcloud.families.vista3d.cache import ClickCache, window_key


class WindowForward:
    """A predictor for `point_window_inference`: VISTA-3D on one window, the click-independent parts cached.

    Example:
        >>> run = WindowForward(network, ClickCache())  # doctest: +SKIP
        >>> point_window_inference(image, roi, run, points, labels, class_vector=cls, prompt_class=cls)  # doctest: +SKIP
    """

    def __init__(self, network: nn.Module, cache: ClickCache) -> None:
        self.network: Any = network
        self.cache = cache

    def __call__(
        self,
        x: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        patch_coords: Sequence[Any] | None = None,
        class_vector: torch.Tensor | None = None,
        prompt_class: torch.Tensor | None = None,
        transpose: bool = True,
    ) -> torch.Tensor:
        net = self.network
        window = window_key(patch_coords)
        assert window is not None and patch_coords is not None, "one window of a point inferer"
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # a plain tensor: same values, no MetaTensor overhead
        size = tuple(x.shape[-3:])
        bs = class_vector.shape[0] if class_vector is not None else point_coords.shape[0]  # type: ignore[union-attr]
        coords, labels, prompt, mapping = _points_in_window(net, patch_coords, point_coords, point_labels, prompt_class)
        if coords is None and class_vector is None:
            logits = net.NINF_VALUE + torch.zeros([bs, 1, *size], device=x.device)
            return logits.transpose(1, 0) if transpose else logits

        key = ("out", window, _values(class_vector), _values(prompt), _values(coords), _values(labels), transpose)
        hit = self.cache.get(key) if self.cache.enabled else None
        if hit is not None:
            return hit
        scratch: dict[Hashable, torch.Tensor] = {}  # what this call computed, whether or not the cache keeps it
        if class_vector is not None:
            logits = self._class_logits(x, window, class_vector, coords is not None, scratch)
            if coords is not None:
                point_logits = self._point_logits(x, window, coords, labels, prompt, scratch)  # type: ignore[arg-type]
                logits = net.connected_components_combine(logits.clone(), point_logits, coords, labels, mapping)
        else:
            point_logits = self._point_logits(x, window, coords, labels, prompt, scratch)  # type: ignore[arg-type]
            logits = net.NINF_VALUE + torch.zeros([bs, 1, *size], device=x.device, dtype=point_logits.dtype)
            logits[mapping] = point_logits
        if transpose:
            logits = logits.transpose(1, 0)
        return self.cache.put(key, logits) if self.cache.enabled else logits

    # ------------------------------------------------------------------ the parts

    def _get(self, key: tuple[Any, ...], scratch: dict[Hashable, torch.Tensor]) -> torch.Tensor | None:
        if key in scratch:
            return scratch[key]
        return self.cache.get(key) if self.cache.enabled else None

    def _keep(self, key: tuple[Any, ...], value: torch.Tensor, scratch: dict[Hashable, torch.Tensor]) -> torch.Tensor:
        scratch[key] = value = value.detach()
        return self.cache.put(key, value) if self.cache.enabled else value

    def _encode(
        self, x: torch.Tensor, window: Hashable, need_low: bool, need_auto: bool, scratch: dict[Hashable, torch.Tensor]
    ) -> None:
        """The encoder once, for the branches not at hand; keeps `low` (the point features downsampled) and `auto`."""
        with_point = need_low and self._get(("low", window), scratch) is None
        with_label = need_auto and self._get(("auto", window), scratch) is None
        if not (with_point or with_label):
            return
        out, out_auto = self.network.image_encoder(x, with_point=with_point, with_label=with_label)
        if with_point:
            self._keep(("low", window), self.network.point_head.feat_downsample(out), scratch)
        if with_label:
            self._keep(("auto", window), out_auto, scratch)

    def _class_logits(
        self,
        x: torch.Tensor,
        window: Hashable,
        class_vector: torch.Tensor,
        with_point: bool,
        scratch: dict[Hashable, torch.Tensor],
    ) -> torch.Tensor:
        key = ("class", window, _values(class_vector))
        hit = self._get(key, scratch)
        if hit is not None:
            return hit
        self._encode(x, window, need_low=with_point, need_auto=True, scratch=scratch)  # both branches in one pass
        logits, _ = self.network.class_head(self._get(("auto", window), scratch), class_vector)
        return self._keep(key, logits, scratch)

    def _point_logits(
        self,
        x: torch.Tensor,
        window: Hashable,
        coords: torch.Tensor,
        labels: torch.Tensor,
        prompt: torch.Tensor | None,
        scratch: dict[Hashable, torch.Tensor],
    ) -> torch.Tensor:
        self._encode(x, window, need_low=True, need_auto=False, scratch=scratch)
        low = self._get(("low", window), scratch)
        assert low is not None
        head = self.network.point_head
        pe_key = ("pe", None, tuple(low.shape[-3:]))
        pe = self._get(pe_key, scratch)
        if pe is None:
            pe = self._keep(pe_key, head.pe_layer(low.shape[-3:]), scratch)
        return point_head_after_downsample(head, low, tuple(x.shape[-3:]), pe, coords, labels, prompt)


def _values(t: torch.Tensor | None) -> tuple[Any, ...] | None:
    """Exact values and shape of a small tensor, as a key."""
    if t is None:
        return None
    return (tuple(t.shape), tuple(t.detach().flatten().cpu().tolist()))


def _points_in_window(
    net: Any,
    patch_coords: Sequence[Any],
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    prompt_class: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """`VISTA3D.forward`'s point handling with `patch_coords`: window coordinates, padding points dropped."""
    if point_coords is None:
        return None, None, prompt_class, None
    coords, labels = net.update_point_to_patch(patch_coords[0], point_coords, point_labels)
    if coords is None or labels is None:
        return None, None, prompt_class, None
    mapping = ((labels != -1).sum(1) > 0).to(torch.bool)
    if not mapping.any():  # not auto_freeze, and patch_coords is given
        return None, None, prompt_class, None
    return coords[mapping], labels[mapping], None if prompt_class is None else prompt_class[mapping], mapping


def point_head_after_downsample(
    head: Any,
    out_low: torch.Tensor,
    out_shape: tuple[int, ...],
    pe: torch.Tensor,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    class_vector: torch.Tensor | None,
) -> torch.Tensor:
    """`PointMappingSAM.forward` (MONAI 1.6) from `out_low = feat_downsample(out)` on; the last layer folded.

    `out_shape` is the encoder output's spatial shape, `pe` is `head.pe_layer(out_low.shape[-3:])`.
    """
    points = point_coords + 0.5  # shift to the centre of the voxel
    point_embedding = head.pe_layer.forward_with_coords(points, out_shape)
    point_embedding[point_labels == -1] = 0.0
    point_embedding[point_labels == -1] += head.not_a_point_embed.weight
    point_embedding[point_labels == 0] += head.point_embeddings[0].weight
    point_embedding[point_labels == 1] += head.point_embeddings[1].weight
    point_embedding[point_labels == 2] += head.point_embeddings[0].weight + head.special_class_embed.weight
    point_embedding[point_labels == 3] += head.point_embeddings[1].weight + head.special_class_embed.weight
    output_tokens = head.mask_tokens.weight.unsqueeze(0).expand(point_embedding.size(0), -1, -1)
    if class_vector is None:
        extra = head.supported_embed.weight.unsqueeze(0).expand(point_embedding.size(0), -1, -1)
    else:
        extra = torch.stack(
            [
                head.zeroshot_embed.weight if i > head.last_supported else head.supported_embed.weight
                for i in class_vector
            ]
        )
    tokens_all = torch.cat((output_tokens, point_embedding, extra), dim=1)
    masks = []
    for i in range(math.ceil(tokens_all.shape[0] / head.max_prompt)):
        tokens = tokens_all[i * head.max_prompt : min((i + 1) * head.max_prompt, tokens_all.shape[0])]
        n = tokens.shape[0]
        src = out_low if n == 1 else torch.repeat_interleave(out_low, n, dim=0)  # the same values, no copy for one
        pos_src = pe.unsqueeze(0) if n == 1 else torch.repeat_interleave(pe.unsqueeze(0), n, dim=0)
        b, c, h, w, d = src.shape
        hs, src = head.transformer(src, pos_src, tokens)
        hyper_in = head.output_hypernetworks_mlps(hs[:, :1, :])
        src = src.transpose(1, 2).reshape(b, c, h, w, d)
        masks.append(upscale_and_project(head.output_upscaling, src, hyper_in))
    return torch.vstack(masks)


def upscale_and_project(upscaling: nn.Sequential, src: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
    """`hyper_in @ upscaling(src)` per batch item, [b, 1, H, W, D], the last convolution folded with `hyper_in`."""
    *layers, last = list(upscaling)
    x = src
    for layer in layers:
        x = layer(x)
    foldable = (
        isinstance(last, nn.Conv3d)
        and last.groups == 1
        and last.padding_mode == "zeros"
        and last.out_channels == hyper_in.shape[-1]
    )
    if not foldable:  # another head layout: MONAI's own order
        up = last(x)
        b, c, h, w, d = up.shape
        return (hyper_in @ up.reshape(b, c, h * w * d)).reshape(-1, 1, h, w, d)
    vectors = hyper_in[:, 0, :].to(last.weight.dtype)  # [b, C_out]
    weights = (vectors @ last.weight.flatten(1)).reshape(-1, *last.weight.shape[1:])  # [b, C_in, k, k, k]
    biases = vectors @ last.bias if last.bias is not None else torch.zeros(len(vectors), device=x.device)
    same = tuple(last.stride) == (1, 1, 1) and tuple(last.dilation) == (1, 1, 1)
    same = same and not isinstance(last.padding, str)
    same = same and all(2 * int(p) + 1 == k for p, k in zip(last.padding, last.kernel_size, strict=True))
    out = [
        _one_channel_conv(x[i], weights[i], biases[i])
        if same
        else F.conv3d(x[i : i + 1], weights[i : i + 1], biases[i : i + 1], last.stride, last.padding, last.dilation)  # type: ignore[arg-type]
        for i in range(x.shape[0])
    ]
    return torch.cat(out)


def _one_channel_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`F.conv3d(x[None], weight[None], bias, padding="same")` for one output channel, [1, 1, H, W, D].

    A convolution library runs one output channel at a fraction of its speed; here the channels are
    reduced first, one matrix product (k³ taps × C) @ (C × voxels), then the k³ shifted maps are added.
    """
    c, h, w, d = x.shape
    k = weight.shape[-3:]
    per_tap = (weight.reshape(c, -1).T.to(x.dtype) @ x.reshape(c, -1)).reshape(-1, h, w, d)  # [k³, H, W, D]
    pad = [s // 2 for s in k]
    out = torch.zeros(h + 2 * pad[0], w + 2 * pad[1], d + 2 * pad[2], device=x.device, dtype=per_tap.dtype)
    tap = 0
    for a in range(k[0]):
        for b in range(k[1]):
            for e in range(
                k[2]
            ):  # out[o] += per_tap[a, b, e][o + (a, b, e) - pad], as a write at o - (a, b, e) + 2 pad
                i, j, m = 2 * pad[0] - a, 2 * pad[1] - b, 2 * pad[2] - e
                out[i : i + h, j : j + w, m : m + d] += per_tap[tap]
                tap += 1
    out = out[pad[0] : pad[0] + h, pad[1] : pad[1] + w, pad[2] : pad[2] + d] + bias.to(out.dtype)
    return out[None, None]
