"""Train and batch jobs as Ray Jobs: the job backend used when `MEDCLOUD_RAY_ADDRESS` is set.

Each job is one Ray Job (the cluster's Jobs API, `JobSubmissionClient`) whose entrypoint is medcloud's
worker, `<python> -m medcloud.worker.run --job-id <id> --ticket <job folder>/ticket.json`. The job
folder is `MEDCLOUD_RAY_SHARED_DIR/jobs/<job id>/`, which every node sees at the same path: the backend
writes the ticket there (0600: it holds the job's credentials, so nothing secret goes through Ray
itself), the worker writes `progress.json`, `outcome.json` and `results/` there, and the API reads them.

- Submission is idempotent: the submission id is `medcloud-<job id>`; a second submit of the same job
  finds that Ray job and returns its handle instead of starting another.
- Jobs belong to the cluster, not to the API: an API restart `adopt`s them (nothing is killed).
- Cancel is Ray's `stop_job` (SIGTERM to the entrypoint's process tree, SIGKILL after a few seconds),
  then a wait until Ray records the job terminal, which it does only once those processes are killed.
- Logs: Ray keeps the entrypoint's stdout/stderr; `logs()` copies them into `<job folder>/logs.txt`.

Where the cluster is: `MEDCLOUD_RAY_DASHBOARD_URL` (the Jobs API), else the dashboard Ray reports
when this process connects to `MEDCLOUD_RAY_ADDRESS`. Which Python runs the worker: the cluster's own
(the interpreter its Ray workers run, asked once with a tiny task), which must have medcloud installed;
the cluster's nodes are assumed to share that layout (one image). Ray is imported in this module only.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.job_submission import JobStatus, JobSubmissionClient

from medcloud.config import Settings
from medcloud.errors import MedcloudError, Unavailable
from medcloud.execution.base import Handle, JobReport
from medcloud.jobs import files
from medcloud.jobs.ticket import TICKET, JobTicket

log = logging.getLogger(__name__)

SUBMISSION_PREFIX = "medcloud-"
RUNNING = {JobStatus.PENDING, JobStatus.RUNNING}
POLL_S = 0.1
WORKER_MODULE = "medcloud.worker.run"
AGENT_WAIT_S = 60.0


def submission_id(job_id: str) -> str:
    return f"{SUBMISSION_PREFIX}{job_id}"


def _is_missing(exc: Exception) -> bool:
    """The Jobs API answered 404: no job with that submission id (the SDK raises a bare RuntimeError)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("Request failed with status code 404")


def _sid(job_id: str, handle: Handle | None) -> str:
    """The job's submission id: the recorded one, else the one `submit` gives every job."""
    return str(handle.data["submission_id"]) if handle and "submission_id" in handle.data else submission_id(job_id)


def _cluster_python() -> str:
    """Runs on a Ray worker (imported from medcloud there, by reference): the interpreter the cluster runs."""
    return sys.executable


class RayJobs:
    """The `JobBackend` of a Ray cluster (see the module docstring). Blocking: call from a thread."""

    name = "ray"
    # Ray does not tell this process when a job ends: the scheduler sees it in its next `report`.
    on_exit: Callable[[], None] | None = None

    def __init__(self, settings: Settings) -> None:
        if not settings.ray_address:
            raise MedcloudError("The Ray job backend needs MEDCLOUD_RAY_ADDRESS (the cluster to run jobs on).")
        if settings.ray_shared_dir is None:
            raise MedcloudError(
                "The Ray job backend needs MEDCLOUD_RAY_SHARED_DIR: a folder every Ray node sees at the same "
                "path (the job folders, bundles and checkpoints live there)."
            )
        self.settings = settings
        self.jobs_dir = Path(settings.ray_shared_dir).expanduser().resolve() / "jobs"
        self._lock = threading.Lock()
        self._client: JobSubmissionClient | None = None
        self._python: str | None = None

    # -- the cluster -------------------------------------------------------------------------------

    def _connect(self) -> Any:
        """This process as a Ray driver of the cluster (shared with the Serve host backend, if any)."""
        return ray.init(
            address=self.settings.ray_address,
            namespace=self.settings.ray_namespace,
            ignore_reinit_error=True,
            log_to_driver=False,
        )

    def client(self) -> JobSubmissionClient:
        with self._lock:
            if self._client is None:
                url = self.settings.ray_dashboard_url
                if not url:
                    url = self._connect().dashboard_url
                    if not url:
                        raise Unavailable(
                            "The Ray cluster runs no dashboard (its Jobs API): start it with one, or set "
                            "MEDCLOUD_RAY_DASHBOARD_URL."
                        )
                    url = url if "://" in url else f"http://{url}"
                self._client = JobSubmissionClient(url)
            return self._client

    def python(self) -> str:
        """The cluster's Python (asked once): the worker must run where `ray` and medcloud are installed."""
        with self._lock:
            if self._python is None:
                self._connect()
                probe = ray.remote(num_cpus=0, max_retries=0)(_cluster_python)
                try:
                    self._python = str(ray.get(probe.remote(), timeout=120))
                except Exception as exc:  # a task error, a timeout: the cluster cannot run medcloud's code
                    raise Unavailable(
                        f"The Ray cluster cannot run medcloud (is it installed in its Python?): {exc}"
                    ) from exc
            return self._python

    def _info(self, job_id: str, handle: Handle | None) -> Any | None:
        """Ray's record of the job (`JobDetails`), or None if the cluster has none."""
        try:
            return self.client().get_job_info(_sid(job_id, handle))
        except RuntimeError as exc:
            if _is_missing(exc):
                return None
            raise

    def _handle(self, job_id: str) -> Handle:
        return Handle(backend=self.name, data={"submission_id": submission_id(job_id)})

    # -- JobBackend --------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def submit(self, ticket: JobTicket) -> Handle:
        handle = self._handle(ticket.job_id)
        if self._info(ticket.job_id, handle) is not None:
            return handle  # submitted before (an API that died before recording the handle): the same job
        directory = self.job_dir(ticket.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in (files.OUTCOME, files.PROGRESS):  # left by an earlier submission that never reached Ray
            (directory / stale).unlink(missing_ok=True)
        ticket_path = directory / TICKET
        ticket.write(ticket_path)
        command = [self.python(), "-m", WORKER_MODULE, "--job-id", ticket.job_id, "--ticket", str(ticket_path)]
        # No secrets here: Ray shows runtime envs to anyone with the dashboard; the worker reads its settings and
        # credentials from the ticket. A job that reserved no GPU sees none (Ray would leave every GPU visible).
        env_vars = {"PYTHONUNBUFFERED": "1"}
        if not self.settings.ray_gpus_per_job:
            env_vars["CUDA_VISIBLE_DEVICES"] = ""
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                self.client().submit_job(
                    entrypoint=shlex.join(command),
                    submission_id=handle.data["submission_id"],
                    entrypoint_num_cpus=1,
                    entrypoint_num_gpus=self.settings.ray_gpus_per_job,
                    runtime_env={"env_vars": env_vars},
                    metadata={"medcloud_job": ticket.job_id},
                )
                break
            except RuntimeError as exc:
                if "already exists" in str(exc):
                    break
                # A cluster that has just started has no job agent registered yet: wait for one.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(POLL_S * 5)
        log.info("Job %s submitted to Ray as %s", ticket.job_id, handle.data["submission_id"])
        return handle

    def report(self, job_id: str, handle: Handle | None) -> JobReport:
        info = self._info(job_id, handle)
        if info is None:
            return JobReport(state="gone", detail="The Ray cluster has no record of the job.")
        directory = self.job_dir(job_id)
        progress = files.read_progress(directory)
        if info.status in RUNNING:
            return JobReport(state="running", progress=progress)
        outcome = files.read_json(directory / files.OUTCOME)
        # Ray's FAILED message goes on with the log's tail: its first clause is the news ("... exit code 1").
        message = (info.message or "").strip().split("\n")[0].split(", last available logs")[0]
        detail = f"Ray job {info.submission_id} {info.status.value}" + (f": {message}" if message else "")
        return JobReport(state="ended", progress=progress, outcome=outcome, detail=detail)

    def cancel(self, job_id: str, handle: Handle | None, timeout: float = 30) -> None:
        sid = _sid(job_id, handle)
        client = self.client()
        try:
            client.stop_job(sid)
        except RuntimeError as exc:
            if _is_missing(exc):
                return
            raise
        # Ray records STOPPED only after it has killed the entrypoint's process tree. timeout=0: ask, don't wait.
        deadline = time.monotonic() + timeout
        while timeout > 0 and client.get_job_status(sid) in RUNNING:
            if time.monotonic() > deadline:
                log.warning("Job %s: Ray job %s still not stopped after %.0f s", job_id, sid, timeout)
                return
            time.sleep(POLL_S)

    def adopt(self, job_id: str, handle: Handle | None) -> Handle | None:
        info = self._info(job_id, handle)
        if info is None:
            return None
        if info.status in RUNNING or (self.job_dir(job_id) / files.OUTCOME).is_file():
            return handle or self._handle(job_id)
        return None

    def logs(self, job_id: str, handle: Handle | None) -> Path | None:
        """The worker's output so far, copied from the cluster into `<job folder>/logs.txt`."""
        sid = _sid(job_id, handle)
        path = self.job_dir(job_id) / files.LOG
        try:
            text = self.client().get_job_logs(sid)
        except RuntimeError as exc:
            if not _is_missing(exc):
                raise
            return path if path.is_file() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
        return path
