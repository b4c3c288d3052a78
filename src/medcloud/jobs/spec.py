"""What a job's model process is given: a serialisable spec, built by the trusted worker, read by the sandbox.

Everything model code needs is in it or in the job folder it names (inputs linked into `inputs/`);
nothing in it opens the server's database, master key, cache or another experiment's folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPEC = "spec.json"
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

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        return cls(**json.loads(path.read_text()))
