"""The job process: `python -m medcloud.jobs.worker --job-id ID --ticket DIR/ticket.json` runs one train or batch job.

It is medcloud's own code and trusted, and knows only its ticket (`jobs/ticket.py`): never the
server's database, master key or data folder, so it runs the same on this machine (local backend) or
on a Ray node. It stages the inputs into the job folder (`learning/staging.py`), runs the bundle's code
in a separate model process inside the experiment's sandbox (`jobs/model_run.py`: a scrubbed
environment, its own uid on a root server), uploads `results/` to the workspace, and reports through
its job folder: `progress.json` (written by the model process) while it runs, `outcome.json` at the end.
The job backend reads those for the scheduler, the only writer of job status.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medcloud.jobs import files
from medcloud.jobs.spec import MODEL_RESULT, SPEC
from medcloud.jobs.ticket import JobTicket
from medcloud.logs import setup_job_logging

log = logging.getLogger("medcloud.worker")


def _die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` that has the kernel kill the child when this worker dies (PR_SET_PDEATHSIG).

    Set after the child took the sandbox's uid (a change of credentials would clear it). A local cancel
    kills the worker's process group, which the model process is in; a Ray node may kill the worker
    alone (stop_job, a crash), and then the model process must not live on out of reach.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)  # loaded before the fork
    pr_set_pdeathsig = 1

    def arm() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return arm


def run_model_process(ctx: Any, *, experiment_id: str, job_dir: Path) -> dict[str, Any]:
    """Run `medcloud.jobs.model_run` in the experiment's sandbox; its outcome, or an Error one."""
    (job_dir / MODEL_RESULT).unlink(missing_ok=True)
    process = ctx.sandbox.popen_kwargs(experiment_id=experiment_id, home=job_dir)
    # Same process group as this worker (cancelling the job kills both), and killed if the worker dies.
    code = subprocess.call(
        [ctx.settings.host_python or sys.executable, "-m", "medcloud.jobs.model_run", "--job-dir", str(job_dir)],
        stdout=sys.stdout.fileno(),
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent(),  # noqa: PLW1509  (the worker has no other threads at this point)
        **process,
    )
    outcome = files.read_json(job_dir / MODEL_RESULT)
    if outcome is None:
        return {"status": "Error", "message": f"The model process died (exit code {code}) before it finished."}
    return outcome


def run_job(ctx: Any, ticket: JobTicket, job_dir: Path) -> dict[str, Any]:
    from medcloud.learning.staging import stage_job

    spec = stage_job(ctx, ticket, job_dir)
    spec.write(job_dir / SPEC)
    outcome = run_model_process(ctx, experiment_id=ticket.experiment_id, job_dir=job_dir)
    if outcome.get("status") == "Done":
        return {"status": "Done", "message": "Done.", "result": outcome.get("result") or {}}
    return {"status": "Error", "message": outcome.get("message") or "The job failed."}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--ticket", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_job_logging()  # stdout is the job's log; storage clients' request and header dumps kept out
    log.info("Job %s: worker started", args.job_id)
    directory = args.ticket.parent
    try:
        ticket = JobTicket.read(args.ticket)
        if ticket.job_id != args.job_id:
            raise ValueError(f"the ticket is for job {ticket.job_id}")
    except (OSError, ValueError, TypeError) as exc:
        files.write_json(
            directory / files.OUTCOME, {"status": "Error", "message": f"The job's ticket is unreadable: {exc}"}
        )
        return 1
    from medcloud.learning.staging import WorkerContext
    from medcloud.learning.upload import upload_results

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
