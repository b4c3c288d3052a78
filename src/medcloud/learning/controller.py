"""The annotation (continual-learning) controller: reacts to notifications and finished train jobs.

One asyncio task per annotation job, in the API process (it only orchestrates; training runs in job
processes). It wakes on an event, never on a timer: `notify` on its train dataset, or the end of one of
its train jobs. Its state (round, baseline, best metric, current train job) lives in the job's
`result`, so a restarted server resumes where it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from medcloud.confined import copy_regular
from medcloud.context import Context
from medcloud.datasets.orm import Notification
from medcloud.errors import Invalid
from medcloud.experiments.orm import Experiment
from medcloud.jobs import files
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.jobs.states import TERMINAL, JobStatus
from medcloud.learning.annotation_specs import check_annotation_specs

log = logging.getLogger(__name__)
STOP_KEYS = {"max_rounds", "key_metric"}
CL_TRAIN_NAME = "Train Job for CL"


@dataclass
class Step:
    """What one look at the state decided."""

    stop: bool = False
    start_runner: bool = False
    swap_weights: Path | None = None
    notes: list[str] = field(default_factory=list)


def latest_seq(session: Any, dataset_id: str) -> int:
    return int(session.scalar(select(func.max(Notification.seq)).where(Notification.dataset_id == dataset_id)) or 0)


def images_since(session: Any, dataset_id: str, baseline: int) -> set[str]:
    rows = session.scalars(
        select(Notification).where(
            Notification.dataset_id == dataset_id,
            Notification.seq > baseline,
            Notification.section.in_(["added", "updated"]),
        )
    )
    return {row.image_id for row in rows}


class AnnotationController:
    """Drives one annotation job; `wake()` is safe to call from any thread via the hub."""

    def __init__(self, ctx: Context, job_id: str) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.event = asyncio.Event()
        self.train_dataset: str | None = None
        self.experiment_id: str | None = None

    def _log(self, text: str) -> None:
        """The annotation job's own log (what `/logs` shows): one line per decision."""
        path = files.job_dir(self.ctx.settings.data_dir, self.job_id) / files.LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    async def run(self) -> None:
        while True:
            try:
                step = await asyncio.to_thread(self.step)
            except Exception as exc:  # something no check foresaw: a job in Error, not a task crashing on each start
                log.exception("Annotation controller of job %s failed", self.job_id)
                await asyncio.to_thread(self._fail, exc)
                return
            for note in step.notes:
                await asyncio.to_thread(self._log, note)
            if step.swap_weights is not None:
                await self._swap(step.swap_weights)
            if step.start_runner:
                self.ctx.events.job_created()
            if step.stop:
                return
            await self.event.wait()
            self.event.clear()

    def _fail(self, exc: Exception) -> None:
        with self.ctx.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is not None and job.status not in TERMINAL:
                message = f"The annotation controller failed: {type(exc).__name__}: {exc}"[:500]
                jobs.transition(session, job, JobStatus.ERROR, message)
        self._log(f"Error: {type(exc).__name__}: {exc}")

    async def _swap(self, checkpoint: Path) -> None:
        """Install the better weights: in the bundle (for restarts) and in the running host (no downtime)."""
        assert self.experiment_id is not None
        with self.ctx.db.session() as session:
            experiment = session.get(Experiment, self.experiment_id)
            bundle_dir = Path(experiment.bundle_dir) if experiment and experiment.bundle_dir else None
        if bundle_dir is not None:
            target = bundle_dir / "models" / "model.pt"
            # the checkpoint was written by model code: copy a regular file, never through a link it left
            await asyncio.to_thread(copy_regular, checkpoint, checkpoint.parents[2], target)
        try:
            await self.ctx.hosts.swap(self.experiment_id, checkpoint)
        except Exception:
            log.exception("Hot swap into the real-time host of %s failed", self.experiment_id)

    def step(self) -> Step:
        with self.ctx.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is None or job.status in TERMINAL or job.status == JobStatus.CANCELING:
                return Step(stop=True)
            experiment = session.get(Experiment, job.experiment_id)
            if experiment is None:
                jobs.transition(session, job, JobStatus.ERROR, "The experiment is gone.")
                return Step(stop=True)
            self.experiment_id, self.train_dataset = experiment.id, experiment.train_datasets[0]
            return self._decide(session, job, experiment)

    def _decide(self, session: Any, job: Job, experiment: Experiment) -> Step:
        state = dict(job.result)
        try:  # a row stored before today's checks: end it with the reason instead of crashing on every start
            criteria = check_annotation_specs(job.specs, allow_expressions=self.ctx.settings.allow_expression_overrides)
        except Invalid as exc:
            jobs.transition(session, job, JobStatus.ERROR, exc.message)
            return Step(stop=True)
        unknown = sorted(set(criteria) - STOP_KEYS)
        if unknown:
            jobs.transition(session, job, JobStatus.ERROR, f"Unknown stop_criteria key(s): {', '.join(unknown)}.")
            return Step(stop=True)
        step = Step()
        if job.status == JobStatus.PENDING:
            state.update(
                round=0, baseline=latest_seq(session, self.train_dataset), best_key_metric=None, train_job=None
            )
            if not jobs.transition(session, job, JobStatus.RUNNING, "Waiting for annotations.", result=state):
                return Step(stop=True)  # canceled before it started
            step.notes.append("Running: waiting for annotations.")
        current = session.get(Job, state["train_job"]) if state.get("train_job") else None
        if current is not None and current.status not in TERMINAL:
            return step  # a round is training: wait for it to end
        if current is not None:
            step.swap_weights = self._finish_round(session, job, state, current)
            if job.status != JobStatus.RUNNING:
                return Step(stop=True)  # canceled meanwhile: its round is not recorded, its weights not used
            step.notes.append(state["detailed_status"]["message"])
        if self._should_stop(session, job, state, criteria):
            step.notes.append(job.result["detailed_status"]["message"])
            step.stop = True
            return step
        waiting = images_since(session, self.train_dataset, state["baseline"])
        if len(waiting) >= int(job.specs.get("round_size", 1)):
            if not self._start_round(session, job, state, experiment):
                return Step(stop=True)  # canceled meanwhile: no train job for it
            step.notes.append(state["detailed_status"]["message"])
            step.start_runner = True
        return step

    def _finish_round(self, session: Any, job: Job, state: dict, train: Job) -> Path | None:
        state["round"] = int(state.get("round", 0)) + 1
        state["train_job"] = None
        metric = train.result.get("key_metric")
        best = state.get("best_key_metric")
        better = train.status == JobStatus.DONE and metric not in (None, -1) and (best is None or metric > best)
        swap = None
        if better:
            state["best_key_metric"] = state["key_metric"] = metric
            # The weights change only if training beat the model it started from (not the epoch-0 check).
            if train.result.get("epoch") not in (0, -1):
                path = self.ctx.jobs.job_dir(train.id) / files.RESULTS / "models" / "model.pt"
                swap = path if path.exists() else None
        message = f"Round {state['round']} finished ({train.status}, key_metric {metric})."
        state["detailed_status"] = {"message": message}
        if not jobs.merge_result(session, job, state, status=JobStatus.RUNNING):
            return None
        return swap

    def _should_stop(self, session: Any, job: Job, state: dict, criteria: dict) -> bool:
        max_rounds, target = criteria.get("max_rounds"), criteria.get("key_metric")
        best = state.get("best_key_metric")
        if max_rounds is not None and state["round"] >= int(max_rounds):
            jobs.transition(session, job, JobStatus.DONE, f"Stopped after {state['round']} round(s) (max_rounds).")
            return True
        if target is not None and best is not None and best >= float(target):
            jobs.transition(session, job, JobStatus.DONE, f"Stopped: key_metric {best:.4f} reached {target}.")
            return True
        return False

    def _start_round(self, session: Any, job: Job, state: dict, experiment: Experiment) -> bool:
        """Create the round's train job; False (and none created) if the job is no longer Running."""
        # Claim the round first: this write fails if a cancel committed before it, and it holds the
        # job's row until commit, so a cancel that comes after finds the new train job among its children.
        starting = {"detailed_status": {"message": f"Round {state['round'] + 1}: starting."}}
        if not jobs.merge_result(session, job, starting, status=JobStatus.RUNNING):
            return False
        specs = {**(job.specs.get("train_spec") or {}), "finetune": True}
        if state["round"] == 0:
            specs["val_at_start"] = True
        train = jobs.create(
            session,
            org=job.org,
            user_id=job.user_id,
            experiment_id=experiment.id,
            action="train",
            specs=specs,
            name=CL_TRAIN_NAME,
            parent_id=job.id,
        )
        state["train_job"] = train.id
        state["baseline"] = latest_seq(session, self.train_dataset)
        state["detailed_status"] = {"message": f"Round {state['round'] + 1}: training ({train.id})."}
        jobs.merge_result(session, job, state, status=JobStatus.RUNNING)
        return True
