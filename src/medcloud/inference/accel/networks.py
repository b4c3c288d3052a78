"""Torch networks wrapped to run in a faster mode, as drop-in `nn.Module`s for a bundle's evaluator.

A bundle's evaluator calls `inferer(inputs, network)`; handing it one of these instead of the network
runs every window in the faster mode and gives back float32 outputs, so the bundle's post-processing
(argmax, inversion, writers) is the bundle's own. A wrapper is built from the network's weights at
that moment and never updated: after a weight swap the predictor builds a new one (`CheckedPredictor`
does it in the background while the exact network serves).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import torch

from medcloud.inference.accel.modes import cpu_does_bf16


def _as_plain(value: Any) -> Any:
    """A MetaTensor as a plain tensor (the faster paths need no metadata; MONAI re-attaches it)."""
    return value.as_tensor() if hasattr(value, "as_tensor") else value


def _to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    return value


def autocast_dtype(device_type: str) -> torch.dtype:
    """bfloat16 on CPUs and on GPUs that do it; float16 on older GPUs."""
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device_type: str) -> torch.autocast:
    return torch.autocast(device_type, dtype=autocast_dtype(device_type))


class Bf16Network(torch.nn.Module):
    """The network in reduced precision.

    A 3D network on a CPU that does bf16 runs as a bfloat16 copy of its weights in channels-last layout
    (about 10 % faster than autocast, 2.6x faster than fp32 on the spleen UNet: docs/performance.md);
    any other network runs under autocast (bf16; fp16 on GPUs without bf16). The exact network is never
    changed, so `exact` stays bit for bit what it was.
    """

    def __init__(self, network: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        volumetric = any(isinstance(m, torch.nn.Conv3d) for m in network.modules())
        self.whole_bf16 = device_type == "cpu" and volumetric and cpu_does_bf16()
        if self.whole_bf16:
            network = copy.deepcopy(network).to(dtype=torch.bfloat16, memory_format=torch.channels_last_3d)
        self.network = network

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.whole_bf16:
            with autocast(self.device_type):
                return _to_float(self.network(*args, **kwargs))
        args = tuple(
            _as_plain(a).to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
            if isinstance(a, torch.Tensor) and a.dim() == 5 and a.is_floating_point()
            else a
            for a in args
        )
        return _to_float(self.network(*args, **kwargs))


def openvino_compile(module: torch.nn.Module, example: torch.Tensor) -> Any:
    """`module` converted by OpenVINO (dynamic shapes) and compiled for this CPU: bf16 where it does bf16."""
    import openvino as ov

    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if cpu_does_bf16() else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # a Ray replica's share, not the whole machine
    }
    return ov.Core().compile_model(model, "CPU", config)


class OpenVinoNetwork(torch.nn.Module):
    """The network compiled by OpenVINO and run on the CPU: one input tensor, one output tensor (what a
    sliding-window inferer passes). Compiled by `build` from an example input, else on its first call."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self._source = [network]  # not a submodule: the compiled model holds its own copy of the weights
        self._compiled: Any = None
        self._lock = threading.Lock()

    def build(self, example: torch.Tensor) -> None:
        with self._lock:
            if self._compiled is None:
                self._compiled = openvino_compile(self._source[0], example)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            raise TypeError("the openvino mode runs networks called with one input tensor")
        x = _as_plain(x).detach()
        if self._compiled is None:
            self.build(x.cpu())
        out = self._compiled(x.cpu().numpy())[0]
        return torch.from_numpy(out).to(x.device)


class OpenVinoVistaEncoder(torch.nn.Module):
    """VISTA-3D's image encoder (`SegResNetDS2`) compiled by OpenVINO, both branches at once.

    Same call as the encoder: `(x, with_point, with_label)` → `(point branch, class branch)`, an empty
    list for a branch not asked for, as MONAI's encoder answers.
    """

    def __init__(self, encoder: torch.nn.Module, window: Sequence[int]) -> None:
        super().__init__()

        class BothBranches(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = encoder

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return self.encoder(x, with_point=True, with_label=True)

        self._compiled = openvino_compile(BothBranches().eval(), torch.zeros(1, 1, *window))

    def forward(self, x: torch.Tensor, with_point: bool = True, with_label: bool = True) -> tuple[Any, Any]:
        x = _as_plain(x).detach()
        result = self._compiled(x.float().cpu().numpy())
        point, label = (torch.from_numpy(result[i]).to(x.device) for i in (0, 1))
        return (point if with_point else []), (label if with_label else [])


def with_encoder(network: torch.nn.Module, encoder: torch.nn.Module) -> torch.nn.Module:
    """A view of `network` whose `image_encoder` is `encoder`: every other submodule (and weight) is shared."""
    view = copy.copy(network)
    view._modules = {**network._modules, "image_encoder": encoder}  # noqa: SLF001  (a shallow view, by design)
    return view


def accelerated(network: torch.nn.Module, mode: str, device_type: str) -> torch.nn.Module:
    """`network` wrapped for `mode` ("bf16" or "openvino"), built from its current weights."""
    if mode == "bf16":
        return Bf16Network(network, device_type).eval()
    if mode == "openvino":
        return OpenVinoNetwork(network).eval()
    raise ValueError(f"no network wrapper for mode {mode!r}")
