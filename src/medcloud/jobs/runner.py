"""The local runner: one spawned process per train/batch job, watched, cancelled and reaped.

A job process (`python -m medcloud.jobs.worker`) runs in its own session so that cancelling kills its
whole tree. It reports through files in its job folder (`progress.json` while it runs, `outcome.json`
when it ends) and the runner turns those into transitions. Every status write is conditional on the
status it was decided from (`jobs.service.transition`), so a cancel and the runner never overwrite
each other: Running is committed before the process starts, then its pid.

After a restart, a worker still running is adopted (found by its recorded pid, or by its command line
when the server died before recording it); a job whose worker is gone ends by its `outcome.json`
(Done, Error), as Canceled when it was Canceling, or as Error when it left no outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import select

from medcloud.context import Context
from medcloud.jobs import files
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.jobs.states import TERMINAL, JobStatus

log = logging.getLogger(__name__)
PROCESS_ACTIONS = ("train", "batchinfer")
HEARTBEAT_S = 5.0
JobEnded = Callable[[str], Awaitable[None]]
WORKER_MODULE = "medcloud.jobs.worker"
STARTING = "Starting the job's process."


def worker_job_id(pid: int) -> str | None:
    """The job id of a live worker process (`... -m medcloud.jobs.worker --job-id ID`), else None."""
    try:
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


class LocalRunner:
    """Schedules Pending process jobs up to `max_parallel` at once and watches the running ones."""

    def __init__(self, ctx: Context, *, max_parallel: int, on_ended: JobEnded | None = None) -> None:
        self.ctx = ctx
        self.max_parallel = max_parallel
        self.on_ended = on_ended
        self._procs: dict[str, subprocess.Popen | None] = {}  # None: adopted after a restart
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = threading.Lock()
        self._event_loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._reap_or_adopt)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def wake(self) -> None:
        self._wake.set()

    def _wake_on_exit(self, proc: subprocess.Popen) -> None:
        """A process ending is an event: record it now rather than at the next periodic look."""
        proc.wait()
        if self._event_loop is not None and not self._event_loop.is_closed():
            self._event_loop.call_soon_threadsafe(self._wake.set)

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.exception("Job runner tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
            self._wake.clear()

    def _reap_or_adopt(self) -> None:
        """At start-up: adopt the workers that outlived the last server, settle the jobs whose worker is gone."""
        with self.ctx.db.session() as session:
            active = [JobStatus.RUNNING.value, JobStatus.CANCELING.value]
            rows = session.scalars(select(Job).where(Job.status.in_(active), Job.action.in_(PROCESS_ACTIONS))).all()
            for row in rows:
                # No pid recorded: the server died between starting the worker and recording it. Its
                # command line names the job, so it is adopted rather than started a second time.
                found = [row.pid] if pid_runs_job(row.pid, row.id) else find_workers(row.id)
                if found:
                    if len(found) > 1:
                        log.warning("Job %s has %d workers (%s); adopting %s", row.id, len(found), found, found[0])
                    row.pid = found[0]
                    self._procs[row.id] = None  # watched by pid; a Canceling one is killed by the next check
                    log.info("Adopted running job %s (pid %s)", row.id, row.pid)
                    continue
                lost = (
                    "The job's process is gone: the server stopped while starting it, and it left no outcome."
                    if row.pid is None
                    else "The job's process is gone (the server or the machine restarted while it ran)."
                )
                outcome = files.read_json(files.job_dir(self.ctx.settings.data_dir, row.id) / files.OUTCOME)
                self._settle(session, row, outcome, lost)

    async def _tick(self) -> None:
        ended = await asyncio.to_thread(self._check_running)
        for job_id in ended:
            if self.on_ended:
                await self.on_ended(job_id)
        await asyncio.to_thread(self._schedule)

    def _check_running(self) -> list[str]:
        with self._lock:  # the loop's tick and a cancel may look at the same moment
            return self._check_running_locked()

    def _check_running_locked(self) -> list[str]:
        ended = []
        for job_id, proc in list(self._procs.items()):
            directory = files.job_dir(self.ctx.settings.data_dir, job_id)
            with self.ctx.db.session() as session:
                row = session.get(Job, job_id)
                pid = proc.pid if proc else (row.pid if row else None)
                alive = proc.poll() is None if proc else pid_runs_job(pid, job_id)
                progress = files.read_json(directory / files.PROGRESS)
                if row is not None and progress and progress != {k: row.result.get(k) for k in progress}:
                    jobs.merge_result(session, row, progress, status=JobStatus.RUNNING)
                if alive:
                    if row is not None and row.status == JobStatus.CANCELING and pid:
                        # A cancel that came while the process was starting (or before a restart adopted
                        # it) found no process to kill: the process must not outlive the cancel.
                        kill_tree(pid)
                    elif row is not None and time.time() - (row.heartbeat or 0) >= HEARTBEAT_S:
                        row.heartbeat = time.time()  # the process was seen alive: GET .../jobs/{id} shows it
                    continue
                self._procs.pop(job_id)
                if row is not None:
                    code = proc.returncode if proc else "unknown"
                    lost = f"The job's process died (exit code {code}) before it finished."
                    self._settle(session, row, files.read_json(directory / files.OUTCOME), lost)
                ended.append(job_id)
        return ended

    def _settle(self, session, row: Job, outcome: dict | None, lost: str) -> None:  # type: ignore[no-untyped-def]
        """The job's process is gone: end the job (Canceled, else by its outcome, else Error with `lost`).

        A write that loses to a concurrent one (a cancel, say) is decided again on the status that won,
        so no job stays Running or Canceling once its process is gone.
        """
        for _attempt in range(len(JobStatus)):  # each lost race moves the status forward, so this ends
            status = JobStatus(row.status)
            if status in TERMINAL or status == JobStatus.PENDING:
                return
            if status == JobStatus.CANCELING:
                moved = jobs.transition(session, row, JobStatus.CANCELED, "Canceled by the user.")
            elif outcome is None:
                moved = jobs.transition(session, row, JobStatus.ERROR, lost)
            else:
                target = JobStatus.DONE if outcome.get("status") == "Done" else JobStatus.ERROR
                result = outcome.get("result")
                message = str(outcome.get("message") or target.value)
                moved = jobs.transition(
                    session, row, target, message, result=result if isinstance(result, dict) else {}
                )
            if moved:
                return

    def _schedule(self) -> None:
        with self._lock, self.ctx.db.session() as session:
            pending = session.scalars(
                select(Job).where(Job.status == "Pending", Job.action.in_(PROCESS_ACTIONS)).order_by(Job.created_on)
            ).all()
            for row in pending:
                if len(self._procs) >= self.max_parallel:
                    return
                self._spawn(session, row)

    def _spawn(self, session, row: Job) -> bool:  # type: ignore[no-untyped-def]
        """Start the job's worker unless the job left Pending since `row` was read; whether it started.

        Called under `_lock`. The intent is committed first (Running, no pid), then the process starts,
        then its pid is committed: a cancel that committed first makes the first write a no-op and no
        process starts; a server killed in between leaves a worker that a restart finds and adopts.
        """
        now = time.time()
        claim = {"pid": None, "started": now, "heartbeat": now}
        if not jobs.transition(session, row, JobStatus.RUNNING, STARTING, values=claim):
            return False
        session.commit()
        try:
            proc = self._popen(row)
        except Exception as exc:
            log.exception("Job %s: starting its process failed", row.id)
            self._settle(session, row, None, f"The job's process could not be started: {exc}")
            session.commit()
            return False
        self._procs[row.id] = proc
        threading.Thread(target=self._wake_on_exit, args=(proc,), daemon=True).start()
        row.pid = proc.pid
        jobs.merge_result(session, row, {"detailed_status": {"message": "Running."}}, status=JobStatus.RUNNING)
        session.commit()
        return True

    def _popen(self, row: Job) -> subprocess.Popen:
        """The worker process of `row` (in its own session, logging into the job folder)."""
        directory = files.job_dir(self.ctx.settings.data_dir, row.id)
        directory.mkdir(parents=True, exist_ok=True)
        # The worker is medcloud's own code and gets this server's settings; the bundle's code runs in a
        # sandboxed child of it with none of them (jobs/worker.py, sandbox.py).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.ctx.settings.as_env()}
        with open(directory / files.LOG, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "medcloud.jobs.worker", "--job-id", row.id],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=directory,
            )
        return proc

    async def cancel(self, job_id: str) -> None:
        """Kill the job's process tree and record Canceled before returning (a DELETE may follow at once)."""

        def target() -> tuple[subprocess.Popen | None, int | None]:
            with self._lock:  # a start in progress finishes first, so its process is known here
                proc = self._procs.get(job_id)
            if proc is not None:
                return proc, proc.pid
            with self.ctx.db.session() as session:
                row = session.get(Job, job_id)
                return None, row.pid if row else None

        proc, pid = await asyncio.to_thread(target)
        if pid and (proc is not None or pid_runs_job(pid, job_id)):
            await asyncio.to_thread(kill_tree, pid)
            if proc is not None:
                await asyncio.to_thread(proc.wait, 30)
            else:
                deadline = time.monotonic() + 30
                while pid_runs_job(pid, job_id) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        for ended in await asyncio.to_thread(self._check_running):
            if self.on_ended:
                await self.on_ended(ended)
