"""The model process of a job: `python -m medcloud.jobs.model_run --job-dir DIR` runs the bundle's code.

Started by the worker in the experiment's sandbox (scrubbed environment, its own uid on a root server).
It reads `spec.json` from the job folder, trains or infers, writes progress to `progress.json` and its
result to `model-result.json`. It never opens the database, the master key or the image cache.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medcloud.jobs import files
from medcloud.jobs.spec import MODEL_RESULT, SPEC, JobSpec
from medcloud.logs import setup_job_logging

log = logging.getLogger("medcloud.model_run")
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
        from medcloud.learning.train import run_train

        return run_train(spec, job_dir)
    if spec.action == "batchinfer":
        from medcloud.learning.batch import run_batchinfer

        return run_batchinfer(spec, job_dir)
    raise ValueError(f"unknown job action {spec.action!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_job_logging()  # stdout is the job's log; storage clients' request and header dumps kept out
    spec = JobSpec.read(args.job_dir / SPEC)
    temp = short_temp_dir()
    try:
        outcome = files.outcome_of(lambda: {"status": "Done", "result": run(spec, args.job_dir)}, log)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    files.write_json(args.job_dir / MODEL_RESULT, outcome)
    return 0 if outcome["status"] == "Done" else 1


if __name__ == "__main__":
    files.exit_now(main())
