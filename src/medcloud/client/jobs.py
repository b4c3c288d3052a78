"""Experiment jobs: create, get, list, wait/watch with progress, follow logs, cancel, download, delete."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from medcloud.client.display import JobDisplay
from medcloud.client.errors import BadRequest, ClientError
from medcloud.client.transport import Transport
from medcloud.client.types import Experiment, Job

LOGS_NOT_YET = "not available yet"


def experiment_id(experiment: Experiment | str) -> str:
    """The id of an `Experiment` or of an id string."""
    return experiment.id if isinstance(experiment, Experiment) else str(experiment)


class JobCalls:
    """The job half of `Client` (needs `self.transport` and `self._pages`)."""

    transport: Transport
    poll_s: float = 2.0

    def _pages(self, path: str, collection: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _job_ref(self, job: Job | str, experiment: Experiment | str | None) -> tuple[str, str]:
        if isinstance(job, Job):
            if job.experiment_id is None:
                raise ClientError(f"Job {job.id} has no experiment id; pass experiment=.")
            return job.experiment_id, job.id
        if experiment is None:
            raise ClientError("Pass experiment= with a job id (jobs live under their experiment).")
        return experiment_id(experiment), str(job)

    def create_job(
        self, experiment: Experiment | str, action: str, specs: dict[str, Any] | None = None, **fields: Any
    ) -> Job:
        """Start an asynchronous job (`train`, `batchinfer`, `annotation`) and return it as created."""
        exp = experiment_id(experiment)
        body = {"action": action, "specs": specs or {}, **{k: v for k, v in fields.items() if v is not None}}
        created = self.transport.json("POST", f"experiments/{exp}/jobs", json=body)
        job_id = created if isinstance(created, str) else created.get("id") if isinstance(created, dict) else None
        if not job_id:
            raise ClientError(f"The server answered {created!r} instead of a job id.")
        return self.job(job_id, experiment=exp)

    def train(self, experiment: Experiment | str, **specs: Any) -> Job:
        """Start a train job; `specs` are bundle overrides such as `epochs=2` (`**{"train#trainer#max_epochs": 2}`)."""
        return self.create_job(experiment, "train", specs)

    def batchinfer(self, experiment: Experiment | str, **specs: Any) -> Job:
        """Start a batch inference job over the experiment's `inference_dataset`."""
        return self.create_job(experiment, "batchinfer", specs)

    def annotation(self, experiment: Experiment | str, **specs: Any) -> Job:
        """Start the continual-learning annotation job (`round_size`, `stop_criteria`, `train_spec`)."""
        return self.create_job(experiment, "annotation", specs)

    def job(self, job: Job | str, *, experiment: Experiment | str | None = None) -> Job:
        """The job as the server sees it now."""
        exp, jid = self._job_ref(job, experiment)
        return Job.from_api(self.transport.json("GET", f"experiments/{exp}/jobs/{jid}"), experiment_id=exp)

    def jobs(self, experiment: Experiment | str) -> Iterator[Job]:
        """Every job of an experiment (annotation jobs and the train jobs they started included)."""
        exp = experiment_id(experiment)
        for raw in self._pages(f"experiments/{exp}/jobs", "jobs"):
            yield Job.from_api(raw, experiment_id=exp)

    def watch(
        self,
        job: Job | str,
        *,
        experiment: Experiment | str | None = None,
        out: TextIO | None = None,
        tty: bool | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job ends, showing its progress on `out` (stderr by default); return the ended job.

        A progress bar on a terminal, one line per change otherwise. `timeout` (s) raises `TimeoutError`.
        """
        display = JobDisplay(out or sys.stderr, tty=tty)
        return self.wait(job, experiment=experiment, timeout=timeout, on_update=display.update)

    def wait(
        self,
        job: Job | str,
        *,
        experiment: Experiment | str | None = None,
        timeout: float | None = None,
        on_update: Any = None,
    ) -> Job:
        """Poll every `poll_s` seconds until the job is Done, Error or Canceled; return it (never raises on Error)."""
        exp, jid = self._job_ref(job, experiment)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = threading.Event()
        while True:
            current = self.job(jid, experiment=exp)
            if on_update is not None:
                on_update(current)
            if current.ended:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {jid} is still {current.status} after {timeout} s.")
            pause.wait(self.poll_s)

    def _log_text(self, exp: str, jid: str) -> str:
        try:
            return self.transport.request("GET", f"experiments/{exp}/jobs/{jid}/logs").text
        except BadRequest as err:
            if LOGS_NOT_YET in err.message:
                return ""
            raise

    def logs(
        self, job: Job | str, *, experiment: Experiment | str | None = None, follow: bool = False
    ) -> Iterator[str]:
        """The job's log lines; with `follow`, new lines as they are written until the job ends."""
        exp, jid = self._job_ref(job, experiment)
        seen = 0
        pending = ""
        pause = threading.Event()
        while True:
            ended = not follow or self.job(jid, experiment=exp).ended
            text = self._log_text(exp, jid)
            if len(text) < seen:  # the log was replaced (a restarted job): start over
                seen, pending = 0, ""
            pending += text[seen:]
            seen = len(text)
            *lines, pending = pending.split("\n")
            yield from lines
            if ended:
                if pending:
                    yield pending
                return
            pause.wait(self.poll_s)

    def cancel(self, job: Job | str, *, experiment: Experiment | str | None = None) -> str:
        """Cancel a Pending or Running job; returns the server's message (an ended job is not an error)."""
        exp, jid = self._job_ref(job, experiment)
        answer = self.transport.json("POST", f"experiments/{exp}/jobs/{jid}:cancel")
        return str(answer.get("message", "")) if isinstance(answer, dict) else str(answer)

    def delete_job(self, job: Job | str, *, experiment: Experiment | str | None = None) -> None:
        """Delete an ended job's record."""
        exp, jid = self._job_ref(job, experiment)
        self.transport.request("DELETE", f"experiments/{exp}/jobs/{jid}")

    def download(self, job: Job | str, dest: str | Path, *, experiment: Experiment | str | None = None) -> Path:
        """Save the job's results (`:download`, a .tar.gz) to `dest`: a path ending `.tar.gz`/`.tgz` is the file,
        anything else a folder (created) that gets `<job id>.tar.gz`. Returns the file's path."""
        exp, jid = self._job_ref(job, experiment)
        target = Path(dest)
        if not target.name.endswith((".tar.gz", ".tgz")) or target.is_dir():
            target = target / f"{jid}.tar.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.transport.download(f"experiments/{exp}/jobs/{jid}:download", target)
        return target
