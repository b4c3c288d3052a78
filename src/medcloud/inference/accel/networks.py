"""Torch networks wrapped to run in a faster mode, as drop-in `nn.Module`s for a bundle's evaluator.

A bundle's evaluator calls `inferer(inputs, network)`; handing it one of these instead of the network
runs every window in the faster mode and gives back float32 outputs, so the bundle's post-processing
(argmax, inversion, writers) is the bundle's own. Each wrapper keeps the exact network as its
`network` submodule: `refresh()` after a weight swap brings the faster copy up to date.
"""

from __future__ import annotations

import copy
import threading
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
    """The network under autocast (bf16; fp16 on GPUs without bf16), channels-last for 3D networks on CPU.

    Channels-last needs its own copy of the weights (the exact network keeps its layout, so `exact` stays
    bit-for-bit what it was); `refresh()` copies the exact network's weights into it after a swap.
    """

    def __init__(self, network: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.network = network
        self.device_type = device_type
        volumetric = any(isinstance(m, torch.nn.Conv3d) for m in network.modules())
        self.channels_last = device_type == "cpu" and volumetric and cpu_does_bf16()
        self._fast = copy.deepcopy(network).to(memory_format=torch.channels_last_3d) if self.channels_last else network

    def refresh(self) -> None:
        if self._fast is not self.network:
            self._fast.load_state_dict(self.network.state_dict())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.channels_last:
            args = tuple(
                a.contiguous(memory_format=torch.channels_last_3d)
                if isinstance(a, torch.Tensor) and a.dim() == 5
                else a
                for a in args
            )
        with autocast(self.device_type):
            return _to_float(self._fast(*args, **kwargs))


class OpenVinoNetwork(torch.nn.Module):
    """The network converted to OpenVINO on its first call (shapes stay dynamic) and run on the CPU.

    bf16 inference precision where the CPU does bf16, else fp32. One input tensor, one output tensor
    (what a sliding-window inferer passes); the conversion runs again on the first call after `refresh()`.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.precision = "bf16" if cpu_does_bf16() else "f32"
        self._compiled: Any = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            self._compiled = None

    def _compile(self, example: torch.Tensor) -> Any:
        import openvino as ov

        with self._lock:
            if self._compiled is None:
                model = ov.convert_model(self.network, example_input=example)
                config = {
                    "INFERENCE_PRECISION_HINT": self.precision,
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # a Ray replica's share, not the machine
                }
                self._compiled = ov.Core().compile_model(model, "CPU", config)
            return self._compiled

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            raise TypeError("the openvino mode runs networks called with one input tensor")
        x = _as_plain(x).detach()
        compiled = self._compiled or self._compile(x.cpu())
        out = compiled(x.cpu().numpy())[0]
        return torch.from_numpy(out).to(x.device)


def accelerated(network: torch.nn.Module, mode: str, device_type: str) -> torch.nn.Module:
    """`network` wrapped for `mode` ("bf16" or "openvino")."""
    if mode == "bf16":
        return Bf16Network(network, device_type).eval()
    if mode == "openvino":
        return OpenVinoNetwork(network).eval()
    raise ValueError(f"no network wrapper for mode {mode!r}")
