"""The job process: `python -m medcloud.jobs.worker --job-id ID` runs one train or batchinfer job.

It is medcloud's own code and trusted: it reads its job, experiment and datasets from the database
(never writes them), stages the inputs into the job folder (`learning/staging.py`), then runs the
bundle's code in a separate model process inside the experiment's sandbox (`jobs/model_run.py`: a
scrubbed environment, its own uid on a root server), uploads `results/` to the experiment's workspace,
and reports through `progress.json` (written by the model process) and finally `outcome.json`, which
the runner turns into a status.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from medcloud.config import Settings
from medcloud.context import Context
from medcloud.experiments.orm import Experiment
from medcloud.jobs import files
from medcloud.jobs.orm import Job
from medcloud.jobs.spec import MODEL_RESULT, SPEC

log = logging.getLogger("medcloud.worker")


def run_model_process(ctx: Context, *, experiment_id: str, job_dir: Path) -> dict[str, Any]:
    """Run `medcloud.jobs.model_run` in the experiment's sandbox; its outcome, or an Error one."""
    (job_dir / MODEL_RESULT).unlink(missing_ok=True)
    process = ctx.sandbox.popen_kwargs(experiment_id=experiment_id, home=job_dir)
    # Same process group as this worker: cancelling the job kills both.
    code = subprocess.call(
        [ctx.settings.host_python or sys.executable, "-m", "medcloud.jobs.model_run", "--job-dir", str(job_dir)],
        stdout=sys.stdout.fileno(),
        stderr=subprocess.STDOUT,
        **process,
    )
    outcome = files.read_json(job_dir / MODEL_RESULT)
    if outcome is None:
        return {"status": "Error", "message": f"The model process died (exit code {code}) before it finished."}
    return outcome


def run_job(ctx: Context, job: Job, experiment: Experiment, job_dir: Path) -> dict[str, Any]:
    from medcloud.learning.staging import stage_job

    spec = stage_job(ctx, job=job, experiment=experiment, job_dir=job_dir)
    spec.write(job_dir / SPEC)
    outcome = run_model_process(ctx, experiment_id=experiment.id, job_dir=job_dir)
    if outcome.get("status") == "Done":
        return {"status": "Done", "message": "Done.", "result": outcome.get("result") or {}}
    return {"status": "Error", "message": outcome.get("message") or "The job failed."}


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
    outcome = files.outcome_of(lambda: run_job(ctx, job, experiment, directory), log)
    try:
        from medcloud.learning.upload import upload_results

        upload_results(ctx, job=job, experiment=experiment, job_dir=directory)
    except Exception as exc:
        log.error("Uploading the results failed: %s", exc)
        outcome = {"status": "Error", "message": f"Training finished but uploading the results failed: {exc}"}
    files.write_json(directory / files.OUTCOME, outcome)
    return 0 if outcome["status"] == "Done" else 1


if __name__ == "__main__":
    files.exit_now(main())
