"""The running annotation controllers and the events that wake them (thread-safe entry points)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from medcloud.context import Context
from medcloud.jobs.orm import Job
from medcloud.learning.controller import AnnotationController

log = logging.getLogger(__name__)


class LearningHub:
    """Starts, resumes, wakes and stops annotation controllers; lives in the app's event loop."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None
        self._controllers: dict[str, tuple[AnnotationController, asyncio.Task]] = {}

    async def start(self) -> None:
        """Resume the controllers of annotation jobs that were active when the server stopped."""
        self._loop = asyncio.get_running_loop()

        def active() -> list[str]:
            with self.ctx.db.session() as session:
                query = select(Job.id).where(Job.action == "annotation", Job.status.in_(["Pending", "Running"]))
                return list(session.scalars(query))

        for job_id in await asyncio.to_thread(active):
            log.info("Resuming annotation job %s", job_id)
            self.launch(job_id)

    def launch(self, job_id: str) -> None:
        """Start the job's controller; idempotent (a follower's wake-up may name a job `start` resumed)."""
        if job_id in self._controllers:
            self._controllers[job_id][0].event.set()
            return
        controller = AnnotationController(self.ctx, job_id)
        task = asyncio.get_running_loop().create_task(controller.run())
        task.add_done_callback(lambda t, j=job_id: self._done(j, t))
        self._controllers[job_id] = (controller, task)

    def _done(self, job_id: str, task: asyncio.Task) -> None:
        self._controllers.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("Annotation controller %s failed", job_id, exc_info=task.exception())

    def _threadsafe(self, callback, *args) -> None:  # type: ignore[no-untyped-def]
        if self._loop is not None:
            self._loop.call_soon_threadsafe(callback, *args)

    def launch_threadsafe(self, job_id: str) -> None:
        self._threadsafe(self.launch, job_id)

    def wake_all(self) -> None:
        for controller, _task in self._controllers.values():
            controller.event.set()

    def dataset_changed(self, dataset_id: str) -> None:
        """Called after `notify` commits (from a worker thread)."""
        self._threadsafe(self._wake_dataset, dataset_id)

    def _wake_dataset(self, dataset_id: str) -> None:
        for controller, _task in self._controllers.values():
            if controller.train_dataset in (None, dataset_id):
                controller.event.set()

    def wake_threadsafe(self) -> None:
        self._threadsafe(self.wake_all)

    async def job_ended(self, job_id: str) -> None:
        """A job ended (the scheduler's call): wake the controllers of its experiment only."""

        def experiment_of() -> str | None:
            with self.ctx.db.session() as session:
                return session.scalar(select(Job.experiment_id).where(Job.id == job_id))

        experiment_id = await asyncio.to_thread(experiment_of)
        for controller, _task in self._controllers.values():
            # a controller that has not read its experiment yet looks again anyway
            if controller.experiment_id in (None, experiment_id):
                controller.event.set()

    def is_running(self, job_id: str) -> bool:
        return job_id in self._controllers

    async def stop(self) -> None:
        for _controller, task in list(self._controllers.values()):
            task.cancel()
