"""The scheduler: starts Pending jobs on the job backend, watches them, cancels them, and settles them.

Backend-neutral (`execution/base.JobBackend`: local worker processes or Ray Jobs) and the only writer
of job status. Every status write is conditional on the status it was decided from
(`jobs.service.transition`), so a cancel and the scheduler never overwrite each other: Running is
committed before the job is submitted, then its backend handle.

After an API restart, a job still running on its backend is adopted (a local worker found by pid or
command line; a Ray job by its submission id); a job whose run is gone ends by its `outcome.json`
(Done, Error), as Canceled when it was Canceling, or as Error when it left no outcome. A job the
server marked Running but died before starting (no process, no log, no outcome) is queued again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sqlalchemy import select

from medcloud.execution.base import Handle, JobBackend, JobReport
from medcloud.execution.kinds import BACKEND_ACTIONS
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.jobs.states import TERMINAL, JobStatus
from medcloud.jobs.ticket import JobTicket

if TYPE_CHECKING:
    from medcloud.context import Context

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0
JobEnded = Callable[[str], Awaitable[None]]
STARTING = "Starting the job's process."
REQUEUED = "Queued again: the server stopped before the job's process started."
GONE = "The job's process is gone (the server or the machine restarted while it ran)."


class Scheduler:
    """Submits Pending backend jobs up to `max_parallel` at once and watches the running ones."""

    def __init__(
        self, ctx: Context, backend: JobBackend, *, max_parallel: int, on_ended: JobEnded | None = None
    ) -> None:
        self.ctx = ctx
        self.backend = backend
        backend.on_exit = self.wake  # a local worker's exit wakes the scheduler at once
        self.max_parallel = max_parallel
        self.on_ended = on_ended
        self._running: dict[str, Handle | None] = {}  # job id → handle (None: submitted, handle not known yet)
        self._unreachable: set[str] = set()  # jobs whose backend could not be asked (warned once)
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
        """Look now (callable from any thread)."""
        loop = self._event_loop
        if loop is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._wake.set)

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.exception("Job scheduler tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
            self._wake.clear()

    def _reap_or_adopt(self) -> None:
        """At start-up: adopt the jobs that outlived the last API, settle the ones whose run is gone."""
        with self.ctx.db.session() as session:
            active = [JobStatus.RUNNING.value, JobStatus.CANCELING.value]
            rows = session.scalars(select(Job).where(Job.status.in_(active), Job.action.in_(BACKEND_ACTIONS))).all()
            for row in rows:
                # No handle recorded: the API died between submitting the job and recording it. The backend
                # finds it by its job id, so it is adopted rather than started a second time.
                handle = Handle.from_json(row.backend_handle)
                adopted = self.backend.adopt(row.id, handle)
                if adopted is not None:
                    row.backend_handle = adopted.to_json()
                    self._running[row.id] = adopted
                    log.info("Adopted running job %s (%s)", row.id, adopted.to_json())
                    continue
                report = self.backend.report(row.id, handle)
                never_started = handle is None and report.state == "gone"
                if never_started and jobs.transition(session, row, JobStatus.PENDING, REQUEUED):
                    log.info("Job %s never started before the last stop; queued again", row.id)
                    continue
                self._settle(session, row, report.outcome, GONE)

    async def _tick(self) -> None:
        ended = await asyncio.to_thread(self._check_running)
        await self._ended(ended)
        await asyncio.to_thread(self._schedule)

    async def _ended(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            if self.on_ended:
                await self.on_ended(job_id)

    def _check_running(self) -> list[str]:
        with self._lock:  # the loop's tick and a cancel may look at the same moment
            return [job_id for job_id in list(self._running) if self._check_one(job_id)]

    def _check_one(self, job_id: str) -> bool:
        """`_check`, where a backend that cannot be asked now (a cluster's API down) leaves the job as it is."""
        try:
            return self._check(job_id)
        except Exception as exc:
            if job_id not in self._unreachable:
                log.warning("Job %s: its backend cannot tell how it is (%s); asking again", job_id, exc)
            self._unreachable.add(job_id)
            return False

    def _check(self, job_id: str) -> bool:
        """Bring one running job's row up to date with its backend; whether it ended."""
        handle = self._running[job_id]
        report = self.backend.report(job_id, handle)
        self._unreachable.discard(job_id)
        with self.ctx.db.session() as session:
            row = session.get(Job, job_id)
            progress = report.progress
            if row is not None and progress and progress != {k: row.result.get(k) for k in progress}:
                jobs.merge_result(session, row, progress, status=JobStatus.RUNNING)
            if report.state == "running":
                if row is not None and row.status == JobStatus.CANCELING:
                    # A cancel that came while the job was starting (or before a restart adopted it) found
                    # nothing to stop: the job must not outlive the cancel.
                    self.backend.cancel(job_id, handle, timeout=0)
                elif row is not None and time.time() - (row.heartbeat or 0) >= HEARTBEAT_S:
                    row.heartbeat = time.time()  # the job was seen alive: GET .../jobs/{id} shows it
                return False
            self._running.pop(job_id)
            if row is not None:
                detail = f" ({report.detail})" if report.detail else ""
                lost = GONE if report.state == "gone" else f"The job's process died{detail} before it finished."
                self._settle(session, row, report.outcome, lost)
        return True

    def _settle(self, session, row: Job, outcome: dict | None, lost: str) -> None:  # type: ignore[no-untyped-def]
        """The job's run is over: end the job (Canceled, else by its outcome, else Error with `lost`).

        A write that loses to a concurrent one (a cancel, say) is decided again on the status that won,
        so no job stays Running or Canceling once its run is gone.
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
                select(Job).where(Job.status == "Pending", Job.action.in_(BACKEND_ACTIONS)).order_by(Job.created_on)
            ).all()
            for row in pending:
                if len(self._running) >= self.max_parallel:
                    return
                self._submit(session, row)

    def _submit(self, session, row: Job) -> bool:  # type: ignore[no-untyped-def]
        """Submit the job unless it left Pending since `row` was read; whether it started.

        Called under `_lock`. The intent is committed first (Running, no handle), then the job is
        submitted, then its handle is committed: a cancel that committed first makes the first write a
        no-op and nothing starts; an API killed in between leaves a run that a restart finds and adopts.
        """
        now = time.time()
        claim = {"backend_handle": None, "started": now, "heartbeat": now}
        if not jobs.transition(session, row, JobStatus.RUNNING, STARTING, values=claim):
            return False
        session.commit()
        try:
            ticket = self._ticket(session, row)
            self._running[row.id] = None
            handle = self.backend.submit(ticket)
        except Exception as exc:
            self._running.pop(row.id, None)
            message = getattr(exc, "message", None) or str(exc)
            log.exception("Job %s: starting it failed", row.id)
            self._settle(session, row, None, f"The job could not be started: {message}")
            session.commit()
            return False
        self._running[row.id] = handle
        row.backend_handle = handle.to_json()
        jobs.merge_result(session, row, {"detailed_status": {"message": "Running."}}, status=JobStatus.RUNNING)
        session.commit()
        return True

    def _ticket(self, session, row: Job) -> JobTicket:  # type: ignore[no-untyped-def]
        from medcloud.learning.tickets import build_ticket

        cache = self.ctx.settings.data_dir / "cache"  # this machine's image cache (a Ray node keeps its own)
        if self.ctx.settings.ray_address and self.ctx.settings.ray_shared_dir:
            cache = self.ctx.settings.ray_shared_dir / "cache"
        return build_ticket(self.ctx, session, row, job_dir_of=self.backend.job_dir, cache_dir=cache)

    async def cancel(self, job_id: str) -> None:
        """Stop the job's run and record Canceled before returning (a DELETE may follow at once)."""

        def stop() -> None:
            with self._lock:  # a submit in progress finishes first, so its handle is known here
                known = job_id in self._running
                handle = self._running.get(job_id)
            if not known:
                with self.ctx.db.session() as session:
                    row = session.get(Job, job_id)
                    handle = Handle.from_json(row.backend_handle) if row else None
                if handle is None:
                    return
            self.backend.cancel(job_id, handle)

        await asyncio.to_thread(stop)
        await self._ended(await asyncio.to_thread(self._check_running))


__all__ = ["Scheduler", "JobReport"]
