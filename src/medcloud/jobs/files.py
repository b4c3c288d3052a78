"""The files a job process and the runner share: where they live and how they are written atomically."""

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


def read_json(path: Path, max_bytes: int = 1 << 20) -> dict[str, Any] | None:
    """A small JSON object written by a job (maybe by model code: links and huge files are refused)."""
    try:
        with open_regular(path, path.parent) as handle:
            value = json.loads(handle.read(max_bytes + 1)[: max_bytes + 1])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
