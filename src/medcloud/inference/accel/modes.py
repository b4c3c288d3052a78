"""The inference modes, and which one a model host runs on this machine.

`exact` runs the bundle as its config says (fp32). The faster modes, each kept because it measured
faster here (docs/performance.md, bench/accelerated_inference.py):

- `bf16`: on CPUs with AVX512-BF16 or AMX, a bfloat16 copy of a 3D network in channels-last layout
  (other networks under `torch.autocast` in bfloat16); on a CUDA GPU, autocast (float16 unless the
  GPU does bfloat16).
- `openvino`: the network (VISTA-3D: its image encoder) converted once to OpenVINO and run by its CPU
  runtime, in bf16 where the CPU does bf16, else fp32.
- `fast`: the first of a family's `fast_modes` (listed best first, as measured) this machine can run.

Measured and not kept (slower than `exact` here): `torch.compile` (56 s to compile, no faster under
autocast) and ONNX Runtime's CPU provider (1.4x slower than PyTorch on the spleen UNet).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

InferenceMode = Literal["exact", "fast", "bf16", "openvino"]
MODES: tuple[str, ...] = get_args(InferenceMode)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_does_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX); without it bf16 is emulated and slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def unavailable_reason(mode: str, device: str) -> str | None:
    """Why `mode` cannot run on `device` ("cpu" or "cuda") here, or None when it can."""
    if mode == "bf16" and device == "cpu" and not cpu_does_bf16():
        return "this CPU has no bfloat16 instructions (AVX512-BF16 or AMX)"
    if mode == "openvino":
        if device != "cpu":
            return "OpenVINO runs on the CPU; this model runs on a GPU"
        if not openvino_installed():
            return "the openvino package is not installed"
    return None


@dataclass(frozen=True)
class Resolution:
    """The mode a host will run (after its check), and why when it is not the one asked for."""

    requested: str
    mode: str
    reason: str = ""


def resolve(requested: str, device: str, supported: tuple[str, ...]) -> Resolution:
    """The mode to run for `requested` on `device`, given the faster modes a model family supports
    (best first: `fast` takes the first this machine can run)."""
    if requested not in MODES:
        return Resolution(requested, "exact", f"unknown inference mode {requested!r}")
    if requested == "exact":
        return Resolution(requested, "exact")
    candidates = supported if requested == "fast" else (requested,)
    reasons = []
    for mode in candidates:
        if mode not in supported:
            reasons.append(f"{mode}: not supported for this model family")
            continue
        reason = unavailable_reason(mode, device)
        if reason is None:
            return Resolution(requested, mode)
        reasons.append(f"{mode}: {reason}")
    return Resolution(requested, "exact", "; ".join(reasons) or f"no faster mode on {device}")
