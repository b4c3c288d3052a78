"""What a job's model process is given: a spec built by the trusted worker, sent as JSON on its stdin.

Everything model code needs is in it or in the read-only inputs it names (`inputs/`); the model process
writes `model-result.json` (and progress, results) in its own `model/` folder (`modelrun/main.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_RESULT = "model-result.json"


@dataclass
class JobSpec:
    """One job, as the model process sees it."""

    job_id: str
    action: str
    experiment_id: str
    network_arch: str
    bundle_dir: str
    specs: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)  # a HostSpec: what batch inference loads
    train_items: list[dict[str, Any]] = field(default_factory=list)
    val_items: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)  # batch inference: {"id", "path"}
    failed: dict[str, str] = field(default_factory=dict)  # images that could not be fetched
    weights: str | None = None  # a train job's checkpoint to run instead of the bundle's
