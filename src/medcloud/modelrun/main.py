"""The model process of a job: `python -m medcloud.modelrun.main --job-dir DIR` runs the bundle's code.

Started by the worker in the sandbox (`sandbox.py`): `DIR` is the job's `model/` folder, the only one it
may write. It reads its `JobSpec` as JSON on stdin, trains or infers from the read-only inputs it names,
writes progress to `DIR/progress.json`, results under `DIR/results/` and its outcome to
`DIR/model-result.json`. It sees no database, key, image cache, ticket or network.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from medcloud.jobs import files
from medcloud.jobs.spec import MODEL_RESULT, JobSpec
from medcloud.logs import setup_job_logging

log = logging.getLogger("medcloud.model_run")
MAX_SPEC_BYTES = 256 << 20  # a train job's data list names every image
# multiprocessing puts its AF_UNIX sockets (torch's DataLoader workers hand tensors over one) at
# `$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX`, and a socket path holds at most 107 bytes: under a deep job
# folder every worker's batch fails to bind and the trainer waits forever (the zoo's spleen bundle, 4 workers).
SOCKET_PATH_MAX = 107
MP_SOCKET_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def short_temp_dir() -> Path | None:
    """Point TMPDIR (and `tempfile`) at a private folder in /tmp when the sandbox's is too long for sockets.

    Returns the folder made (the caller removes it), or None when the given TMPDIR is short enough.
    """
    if len(os.fsencode(tempfile.gettempdir())) + MP_SOCKET_SUFFIX <= SOCKET_PATH_MAX:
        return None
    short = Path(tempfile.mkdtemp(prefix="medcloud-job-", dir="/tmp"))  # 0700, this process's uid only
    os.environ["TMPDIR"] = tempfile.tempdir = str(short)
    return short


def run(spec: JobSpec, job_dir: Path) -> dict[str, Any]:
    if spec.action == "train":
        from medcloud.modelrun.train import run_train

        return run_train(spec, job_dir)
    if spec.action == "batchinfer":
        from medcloud.modelrun.batch import run_batchinfer

        return run_batchinfer(spec, job_dir)
    raise ValueError(f"unknown job action {spec.action!r}")


def export_tracking(spec: JobSpec, job_dir: Path) -> None:
    """MLflow runs logged to this job's local store, as JSON for the worker to send on (no network here)."""
    uri = str(spec.specs.get("tracking_uri") or "")
    if spec.specs.get("tracking") != "mlflow" or not uri.startswith("sqlite:///"):
        return
    from medcloud.modelrun.tracking import EXPORT, export_runs

    try:
        log.info("Exported %d MLflow run(s) for the worker", export_runs(uri, job_dir / EXPORT))
    except Exception as exc:  # noqa: BLE001  (tracking must not fail a finished job)
        log.error("Exporting the MLflow runs failed: %s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_job_logging()  # stdout is the job's log; storage clients' request and header dumps kept out
    spec = JobSpec(**json.loads(sys.stdin.buffer.read(MAX_SPEC_BYTES)))
    temp = short_temp_dir()
    try:
        outcome = files.outcome_of(lambda: {"status": "Done", "result": run(spec, args.job_dir)}, log)
        export_tracking(spec, args.job_dir)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    files.write_json(args.job_dir / MODEL_RESULT, outcome)
    return 0 if outcome["status"] == "Done" else 1


if __name__ == "__main__":
    files.exit_now(main())
