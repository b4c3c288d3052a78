"""The files a job process and the runner share: where they live and how they are written atomically.

A job folder `jobs/<id>/` is the server's and its worker's: `ticket.json` (read and deleted by the worker),
`logs.txt`, `outcome.json`, `inputs/` (read-only for model code), `results/` (copied by the worker from the
model's). `model/` is the one folder model code writes (`progress.json`, `model-result.json`, `results/`):
every read there starts at the job folder and walks down with O_NOFOLLOW (`confined.py`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from medcloud.confined import open_regular
from medcloud.errors import MedcloudError

LOG = "logs.txt"
PROGRESS = "progress.json"
OUTCOME = "outcome.json"
RESULTS = "results"
MODEL = "model"  # the model process's own, writable folder
INPUTS = "inputs"


def outcome_of(work: Callable[[], dict[str, Any]], log: logging.Logger) -> dict[str, Any]:
    """`work()`'s outcome (`{"status": "Done", ...}`), or an Error one with a sentence for the user."""
    try:
        return work()
    except MedcloudError as exc:
        log.error("Job failed: %s", exc.message)
        return {"status": "Error", "message": exc.message}
    except Exception as exc:
        log.error("Job failed:\n%s", "".join(traceback.format_exception(exc)))
        return {"status": "Error", "message": f"{type(exc).__name__}: {exc}"}


def exit_now(code: int) -> NoReturn:
    """Everything is written: skip the interpreter's slow teardown (torch, CUDA) so the parent sees the end at once."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "jobs" / job_id


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write JSON so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle)
    os.replace(tmp, path)


def read_json(path: Path, max_bytes: int = 1 << 20, *, root: Path | None = None) -> dict[str, Any] | None:
    """A small JSON object written by a job, or by model code below the trusted folder `root` (default: the
    file's own folder): links anywhere below `root`, special and huge files are refused (None)."""
    try:
        with open_regular(path, root or path.parent, max_bytes=max_bytes) as handle:
            value = json.loads(handle.read(max_bytes + 1))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def model_dir(job_dir: Path) -> Path:
    return job_dir / MODEL


def read_progress(job_dir: Path) -> dict[str, Any] | None:
    """The model process's `progress.json`, read from the job folder down (never through a link)."""
    return read_json(job_dir / MODEL / PROGRESS, root=job_dir)
