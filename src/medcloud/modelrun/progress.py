"""Progress of a running train job, written where the runner reads it (`progress.json`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medcloud.jobs import files


class ProgressReporter:
    """Collects epoch, iteration and metric, and derives time per epoch and ETA."""

    def __init__(self, job_dir: Path, max_epoch: int) -> None:
        self.path = job_dir / files.PROGRESS
        self.max_epoch = max_epoch
        self.started = time.monotonic()
        self.values: dict[str, Any] = {"epoch": 0, "max_epoch": max_epoch, "cur_iter": 0}
        self.flush()

    def update(self, **values: Any) -> None:
        self.values.update({k: v for k, v in values.items() if v is not None})
        epoch = self.values.get("epoch") or 0
        if epoch:
            per_epoch = (time.monotonic() - self.started) / epoch
            self.values["time_per_epoch"] = round(per_epoch, 3)
            self.values["eta"] = round(per_epoch * max(self.max_epoch - epoch, 0), 1)
        self.flush()

    def flush(self) -> None:
        files.write_json(self.path, self.values)
