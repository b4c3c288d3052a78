"""The job process: `python -m medcloud.worker.run --job-id ID --ticket DIR/ticket.json` runs one train or batch job.

It is medcloud's own code and trusted, and knows only its ticket (`jobs/ticket.py`), which it reads and
deletes at once: never the server's database, master key or data folder, so it runs the same on this
machine (local backend) or on a Ray node. It stages the inputs into the job folder
(`worker/staging.py`), runs the bundle's code in a separate model process inside the sandbox
(`modelrun/main.py`, `sandbox.py`: it sees its bundle and `inputs/` read-only and writes `model/` only,
with no network), copies the model's results out through fds, relays its MLflow records, uploads
`results/` to the workspace, and reports through its job folder: `model/progress.json` (the model
process's) while it runs, `outcome.json` at the end. The job backend reads those for the scheduler, the
only writer of job status.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medcloud.confined import copy_tree
from medcloud.jobs import files
from medcloud.jobs.spec import MODEL_RESULT, JobSpec
from medcloud.jobs.ticket import JobTicket
from medcloud.logs import setup_job_logging

log = logging.getLogger("medcloud.worker")


def run_model_process(ctx: Any, spec: JobSpec, *, job_dir: Path) -> dict[str, Any]:
    """Run `medcloud.modelrun.main` in the sandbox (its spec on stdin); its outcome, or an Error one."""
    model = ctx.sandbox.fresh_folder(files.model_dir(job_dir), experiment_id=spec.experiment_id)
    readable = [Path(spec.bundle_dir), job_dir / files.INPUTS]
    launch = ctx.sandbox.launch(
        ["-m", "medcloud.modelrun.main", "--job-dir", str(model)],
        experiment_id=spec.experiment_id,
        readable=[path for path in readable if path.exists()],
        writable=model,
    )
    wall = ctx.settings.sandbox_job_wall_s
    # stdout is the job's log. bwrap ends every process of the model with it (its own pid namespace), and
    # dies with this worker (--die-with-parent): a cancel that kills the worker ends the model too.
    with subprocess.Popen(
        launch.argv,
        stdin=subprocess.PIPE,
        stdout=sys.stdout.fileno(),
        stderr=subprocess.STDOUT,
        **launch.popen_kwargs(),
    ) as proc:
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(asdict(spec)).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = proc.wait(timeout=wall)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {
                "status": "Error",
                "message": f"The model process ran past {wall:.0f} s (MEDCLOUD_SANDBOX_JOB_WALL_S).",
            }
    outcome = files.read_json(model / MODEL_RESULT, root=job_dir)
    if outcome is None or outcome.get("status") not in ("Done", "Error"):
        return {"status": "Error", "message": f"The model process died (exit code {code}) before it finished."}
    message = outcome.get("message")
    result = outcome.get("result")
    return {
        "status": outcome["status"],
        "message": message[:2000] if isinstance(message, str) else None,
        "result": result if isinstance(result, dict) else {},
    }


def run_job(ctx: Any, ticket: JobTicket, job_dir: Path) -> dict[str, Any]:
    from medcloud.worker.staging import stage_job
    from medcloud.worker.tracking_relay import MlflowRelay

    spec = stage_job(ctx, ticket, job_dir)
    relay = MlflowRelay.take_over(spec, model_dir=files.model_dir(job_dir))
    try:
        outcome = run_model_process(ctx, spec, job_dir=job_dir)
    finally:
        # What the model wrote comes out through fds, regular files only, into the worker's own folders.
        shutil.rmtree(job_dir / files.RESULTS, ignore_errors=True)
        (job_dir / files.RESULTS).mkdir()
        copy_tree(files.model_dir(job_dir) / files.RESULTS, job_dir / files.RESULTS)
        relay.replay(job_dir)
    if outcome.get("status") == "Done":
        return {"status": "Done", "message": "Done.", "result": outcome.get("result") or {}}
    return {"status": "Error", "message": outcome.get("message") or "The job failed."}


def read_ticket(path: Path, job_id: str) -> JobTicket:
    """The job's ticket, deleted once read: model code never finds it, nor does a later reader."""
    try:
        ticket = JobTicket.read(path)
    finally:
        path.unlink(missing_ok=True)
    if ticket.job_id != job_id:
        raise ValueError(f"the ticket is for job {ticket.job_id}")
    return ticket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--ticket", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_job_logging()  # stdout is the job's log; storage clients' request and header dumps kept out
    log.info("Job %s: worker started", args.job_id)
    directory = args.ticket.parent
    try:
        ticket = read_ticket(args.ticket, args.job_id)
    except (OSError, ValueError, TypeError) as exc:
        files.write_json(
            directory / files.OUTCOME, {"status": "Error", "message": f"The job's ticket is unreadable: {exc}"}
        )
        return 1
    from medcloud.worker.staging import WorkerContext
    from medcloud.worker.upload import upload_results

    ctx = WorkerContext.from_ticket(ticket, directory)
    outcome = files.outcome_of(lambda: run_job(ctx, ticket, directory), log)
    try:
        remote = upload_results(ctx.settings, job_id=ticket.job_id, target=ticket.results, job_dir=directory)
        if remote and outcome.get("status") == "Done":
            outcome["result"]["results_folder"] = remote  # where the workspace holds them (MEDCLOUD_RESULTS_LAYOUT)
    except Exception as exc:
        log.error("Uploading the results failed: %s", exc)
        outcome = {"status": "Error", "message": f"Training finished but uploading the results failed: {exc}"}
    files.write_json(directory / files.OUTCOME, outcome)
    return 0 if outcome["status"] == "Done" else 1


if __name__ == "__main__":
    files.exit_now(main())
