"""The model process of a job: `python -m medcloud.jobs.model_run --job-dir DIR` runs the bundle's code.

Started by the worker in the experiment's sandbox (scrubbed environment, its own uid on a root server).
It reads `spec.json` from the job folder, trains or infers, writes progress to `progress.json` and its
result to `model-result.json`. It never opens the database, the master key or the image cache.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from medcloud.jobs import files
from medcloud.jobs.spec import MODEL_RESULT, SPEC, JobSpec
from medcloud.logs import setup_job_logging

log = logging.getLogger("medcloud.model_run")


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
    outcome = files.outcome_of(lambda: {"status": "Done", "result": run(spec, args.job_dir)}, log)
    files.write_json(args.job_dir / MODEL_RESULT, outcome)
    return 0 if outcome["status"] == "Done" else 1


if __name__ == "__main__":
    files.exit_now(main())
