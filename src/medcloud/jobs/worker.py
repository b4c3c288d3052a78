"""The job process: `python -m medcloud.jobs.worker --job-id ID` runs one train or batchinfer job.

It reads its job, experiment and datasets from the database (never writes them), does the work in
`<data>/jobs/<id>/results/`, uploads that folder to the experiment's workspace when it has one, and
reports through `progress.json` and finally `outcome.json`, which the runner turns into a status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any

from medcloud.config import Settings
from medcloud.context import Context
from medcloud.errors import MedcloudError
from medcloud.experiments.orm import Experiment
from medcloud.jobs import files
from medcloud.jobs.orm import Job

log = logging.getLogger("medcloud.worker")


def run_job(ctx: Context, job: Job, experiment: Experiment) -> dict[str, Any]:
    directory = files.job_dir(ctx.settings.data_dir, job.id)
    if job.action == "train":
        from medcloud.learning.train import run_train

        return run_train(ctx, job=job, experiment=experiment, job_dir=directory)
    if job.action == "batchinfer":
        from medcloud.learning.batch import run_batchinfer

        return run_batchinfer(ctx, job=job, experiment=experiment, job_dir=directory)
    raise ValueError(f"unknown job action {job.action!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    log.info("Job %s: worker started", args.job_id)
    ctx = Context.build(Settings())
    directory = files.job_dir(ctx.settings.data_dir, args.job_id)
    with ctx.db.session() as session:
        job = session.get(Job, args.job_id)
        experiment = session.get(Experiment, job.experiment_id) if job else None
    if job is None or experiment is None:
        files.write_json(
            directory / files.OUTCOME, {"status": "Error", "message": "The job or its experiment is gone."}
        )
        return 1
    try:
        result = run_job(ctx, job, experiment)
        outcome = {"status": "Done", "message": "Done.", "result": result}
    except MedcloudError as exc:
        log.error("Job failed: %s", exc.message)
        outcome = {"status": "Error", "message": exc.message}
    except Exception as exc:
        log.error("Job failed:\n%s", "".join(traceback.format_exception(exc)))
        outcome = {"status": "Error", "message": f"{type(exc).__name__}: {exc}"}
    try:
        from medcloud.learning.upload import upload_results

        upload_results(ctx, job=job, experiment=experiment, job_dir=directory)
    except Exception as exc:
        log.error("Uploading the results failed: %s", exc)
        outcome = {"status": "Error", "message": f"Training finished but uploading the results failed: {exc}"}
    files.write_json(directory / files.OUTCOME, outcome)
    return 0 if outcome["status"] == "Done" else 1


if __name__ == "__main__":
    code = main()
    # Everything is written: skip the interpreter's slow teardown (torch, CUDA) so the runner sees the end at once.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)
