"""The local job backend: one worker process per job on this machine, in its own session.

`submit` writes the ticket into `<data_dir>/jobs/<id>/` (0600) and starts
`python -m medcloud.worker.run --job-id ID --ticket ...` with its output in the job folder's log. The
handle is the worker's pid. After an API restart a worker still running is adopted: found by its pid
(checked against its command line: pids get reused), or by its command line when the API died before
recording the pid. The worker reports through its job folder (`progress.json`, `outcome.json`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from medcloud.config import Settings
from medcloud.execution.base import Handle, JobReport
from medcloud.jobs import files
from medcloud.jobs.ticket import TICKET, JobTicket

log = logging.getLogger(__name__)
WORKER_MODULE = "medcloud.worker.run"


def worker_job_id(pid: int) -> str | None:
    """The job id of a live worker process (`... -m medcloud.worker.run --job-id ID`), else None.

    A worker runs as the server's user in the server's pid namespace; model code runs as another uid in a
    namespace of its own, so a model process that names itself a worker is never taken for one.
    """
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return None
        if os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino:
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    args = [arg.decode(errors="replace") for arg in raw.split(b"\0")]  # a zombie's is empty
    if WORKER_MODULE not in args or "--job-id" not in args[:-1]:
        return None
    return args[args.index("--job-id") + 1]


def pid_runs_job(pid: int | None, job_id: str) -> bool:
    """True if `pid` is alive and is the worker of `job_id` (pids get reused)."""
    return pid is not None and pid > 0 and worker_job_id(pid) == job_id


def find_workers(job_id: str) -> list[int]:
    """The live worker processes of `job_id`, found by their command lines."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return sorted(pid for pid in pids if pid != os.getpid() and pid_runs_job(pid, job_id))


def kill_tree(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class LocalJobs:
    """Worker processes of this machine. Blocking methods: call them from a thread."""

    name = "local"

    def __init__(self, settings: Settings, on_exit: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_exit = on_exit  # called (from a thread) when a worker started here exits: wake the scheduler
        self._procs: dict[str, subprocess.Popen] = {}  # workers started by this process (exit codes known)
        self._lock = threading.Lock()

    def job_dir(self, job_id: str) -> Path:
        return files.job_dir(self.settings.data_dir, job_id)

    def _pid(self, job_id: str, handle: Handle | None) -> int | None:
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is not None:
            return proc.pid
        pid = handle.data.get("pid") if handle else None
        return pid if isinstance(pid, int) else None

    def _alive(self, job_id: str, handle: Handle | None) -> bool:
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is not None:
            return proc.poll() is None
        return pid_runs_job(self._pid(job_id, handle), job_id)

    def submit(self, ticket: JobTicket) -> Handle:
        with self._lock:
            proc = self._procs.get(ticket.job_id)
        if proc is not None:
            return Handle(self.name, {"pid": proc.pid})
        running = find_workers(ticket.job_id)
        if running:  # idempotent: the job's worker already runs
            return Handle(self.name, {"pid": running[0]})
        directory = self.job_dir(ticket.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / files.OUTCOME).unlink(missing_ok=True)
        ticket.write(directory / TICKET)
        proc = self._popen(ticket.job_id, directory)
        with self._lock:
            self._procs[ticket.job_id] = proc
        threading.Thread(target=self._watch, args=(proc,), daemon=True).start()
        return Handle(self.name, {"pid": proc.pid})

    def _popen(self, job_id: str, directory: Path) -> subprocess.Popen:
        """The worker process (in its own session, logging into the job folder)."""
        # The worker gets no MEDCLOUD_* setting (no master key, no database URL): everything is in its ticket.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCLOUD_")}
        with open(directory / files.LOG, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "--job-id", job_id, "--ticket", str(directory / TICKET)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**env, "PYTHONUNBUFFERED": "1"},
                cwd=directory,
            )

    def _watch(self, proc: subprocess.Popen) -> None:
        """A worker ending is an event: wake the scheduler now rather than at its next periodic look."""
        proc.wait()
        if self.on_exit is not None:
            self.on_exit()

    def report(self, job_id: str, handle: Handle | None) -> JobReport:
        directory = self.job_dir(job_id)
        progress = files.read_progress(directory)
        if self._alive(job_id, handle) or (handle is None and find_workers(job_id)):
            return JobReport("running", progress=progress)
        with self._lock:
            proc = self._procs.pop(job_id, None)
        outcome = files.read_json(directory / files.OUTCOME)
        if proc is None and handle is None and outcome is None and not (directory / files.LOG).exists():
            return JobReport("gone", progress=progress)  # never started: `_popen` opens the log first
        code = proc.returncode if proc is not None else "unknown"
        return JobReport("ended", progress=progress, outcome=outcome, detail=f"exit code {code}")

    def cancel(self, job_id: str, handle: Handle | None, timeout: float = 30) -> None:
        pids = {pid for pid in [self._pid(job_id, handle)] if pid and self._alive(job_id, handle)}
        pids.update(find_workers(job_id) if handle is None else [])
        for pid in pids:
            kill_tree(pid)
        with self._lock:
            proc = self._procs.get(job_id)
        deadline = time.monotonic() + timeout
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if timeout > 0:
                    log.warning("Job %s: its worker did not exit within %.0f s of SIGKILL", job_id, timeout)
            return
        while any(pid_runs_job(pid, job_id) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def adopt(self, job_id: str, handle: Handle | None) -> Handle | None:
        pid = self._pid(job_id, handle)
        found = [pid] if pid is not None and pid_runs_job(pid, job_id) else find_workers(job_id)
        if not found:
            return None
        if len(found) > 1:
            log.warning("Job %s has %d workers (%s); adopting %s", job_id, len(found), found, found[0])
        return Handle(self.name, {"pid": found[0]})

    def logs(self, job_id: str, handle: Handle | None) -> Path | None:
        path = self.job_dir(job_id) / files.LOG
        return path if path.exists() else None
