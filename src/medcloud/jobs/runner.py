"""The local runner: one spawned process per train/batch job, watched, cancelled and reaped.

A job process (`python -m medcloud.jobs.worker`) runs in its own session so that cancelling kills its
whole tree. It reports through files in its job folder (`progress.json` while it runs, `outcome.json`
when it ends) and the runner, the only writer of job status, turns those into transitions. After a
restart, a Running job whose process is gone becomes Error; one whose process still runs is adopted.
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
from medcloud.jobs.states import JobStatus

log = logging.getLogger(__name__)
PROCESS_ACTIONS = ("train", "batchinfer")
HEARTBEAT_S = 5.0
JobEnded = Callable[[str], Awaitable[None]]


def pid_runs_job(pid: int | None, job_id: str) -> bool:
    """True if `pid` is alive and is the worker of `job_id` (pids get reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return job_id in cmdline and "medcloud.jobs.worker" in cmdline


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
        with self.ctx.db.session() as session:
            running = session.scalars(select(Job).where(Job.status.in_(["Running", "Canceling"])))
            for row in running:
                if row.action not in PROCESS_ACTIONS:
                    continue
                if pid_runs_job(row.pid, row.id):
                    self._procs[row.id] = None
                    log.info("Adopted running job %s (pid %s)", row.id, row.pid)
                else:
                    jobs.transition(
                        session,
                        row,
                        JobStatus.ERROR,
                        "The job's process is gone (the server or the machine restarted while it ran).",
                    )

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
                alive = proc.poll() is None if proc else pid_runs_job(row.pid if row else None, job_id)
                progress = files.read_json(directory / files.PROGRESS)
                if row is not None and progress and progress != {k: row.result.get(k) for k in progress}:
                    jobs.merge_result(session, row, progress)
                if alive:
                    if row is not None and time.time() - (row.heartbeat or 0) >= HEARTBEAT_S:
                        row.heartbeat = time.time()  # the process was seen alive: GET .../jobs/{id} shows it
                    continue
                self._procs.pop(job_id)
                if row is not None:
                    self._finish(session, row, files.read_json(directory / files.OUTCOME), proc)
                ended.append(job_id)
        return ended

    def _finish(self, session, row: Job, outcome: dict | None, proc: subprocess.Popen | None) -> None:  # type: ignore[no-untyped-def]
        if row.status == JobStatus.CANCELING:
            jobs.transition(session, row, JobStatus.CANCELED, "Canceled by the user.")
            return
        if outcome is None:
            code = proc.returncode if proc else "unknown"
            jobs.transition(
                session, row, JobStatus.ERROR, f"The job's process died (exit code {code}) before it finished."
            )
            return
        jobs.merge_result(session, row, outcome.get("result") or {})
        target = JobStatus.DONE if outcome.get("status") == "Done" else JobStatus.ERROR
        jobs.transition(session, row, target, outcome.get("message") or target.value)

    def _schedule(self) -> None:
        with self._lock, self.ctx.db.session() as session:
            pending = session.scalars(
                select(Job).where(Job.status == "Pending", Job.action.in_(PROCESS_ACTIONS)).order_by(Job.created_on)
            ).all()
            for row in pending:
                if len(self._procs) >= self.max_parallel:
                    return
                self._spawn(session, row)

    def _spawn(self, session, row: Job) -> None:  # type: ignore[no-untyped-def]
        directory = files.job_dir(self.ctx.settings.data_dir, row.id)
        directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEDCLOUD_DATA_DIR": str(self.ctx.settings.data_dir)}
        if self.ctx.settings.database_url:
            env["MEDCLOUD_DATABASE_URL"] = self.ctx.settings.database_url
        with open(directory / files.LOG, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "medcloud.jobs.worker", "--job-id", row.id],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=directory,
            )
        self._procs[row.id] = proc
        threading.Thread(target=self._wake_on_exit, args=(proc,), daemon=True).start()
        row.pid, row.started, row.heartbeat = proc.pid, time.time(), time.time()
        jobs.transition(session, row, JobStatus.RUNNING, "Running.")

    async def cancel(self, job_id: str) -> None:
        """Kill the job's process tree and record Canceled before returning (a DELETE may follow at once)."""
        proc = self._procs.get(job_id)

        def pid_of() -> int | None:
            with self.ctx.db.session() as session:
                row = session.get(Job, job_id)
                return proc.pid if proc else (row.pid if row else None)

        pid = await asyncio.to_thread(pid_of)
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
