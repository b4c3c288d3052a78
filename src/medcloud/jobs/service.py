"""Job rows: create, read, list, progress, delete, and `transition()`, the only writer of `status`."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medcloud.errors import Conflict, NotFound
from medcloud.jobs.orm import Job
from medcloud.jobs.schemas import JobOut
from medcloud.jobs.states import ACTIVE, JobStatus, allowed

log = logging.getLogger(__name__)


def to_out(row: Job) -> JobOut:
    return JobOut(
        id=row.id,
        parent_id=row.parent_id,
        action=row.action,
        status=row.status,
        specs=dict(row.specs),
        name=row.name,
        description=row.description,
        result=dict(row.result), heartbeat=row.heartbeat,
        experiment_id=row.experiment_id,
        dataset_id=row.dataset_id,
        created_on=row.created_on,
        last_modified=row.last_modified,
    )


def create(
    session: Session,
    *,
    org: str,
    user_id: str,
    experiment_id: str,
    action: str,
    specs: dict[str, Any],
    name: str = "",
    description: str = "",
    parent_id: str | None = None,
) -> Job:
    row = Job(
        org=org,
        user_id=user_id,
        experiment_id=experiment_id,
        action=action,
        specs=specs,
        name=name or f"{action} job",
        description=description,
        parent_id=parent_id,
        status=JobStatus.PENDING.value,
        result={"detailed_status": {"message": "Waiting to start."}},
    )
    session.add(row)
    session.flush()
    return row


def transition(session: Session, row: Job, target: JobStatus, message: str | None = None) -> bool:
    """Move `row` to `target` if the table allows it; return whether it moved. Logs every move."""
    current = JobStatus(row.status)
    if current == target:
        return False
    if not allowed(current, target):
        log.info("Job %s: %s -> %s refused by the state table", row.id, current, target)
        return False
    row.status = target.value
    if message is not None:
        row.result = {**row.result, "detailed_status": {"message": message}}
    session.flush()
    log.info("Job %s: %s -> %s%s", row.id, current, target, f" ({message})" if message else "")
    return True


def merge_result(session: Session, row: Job, values: dict[str, Any]) -> None:
    row.result = {**row.result, **values}
    session.flush()


def get_row(session: Session, *, org: str, user_id: str, experiment_id: str, job_id: str) -> Job:
    row = session.get(Job, job_id)
    if row is None or row.org != org or row.user_id != user_id or row.experiment_id != experiment_id:
        raise NotFound(f"Job {job_id} not found.")
    return row


def list_for_experiment(session: Session, *, experiment_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.experiment_id == experiment_id).order_by(Job.created_on)))


def active_for_experiment(session: Session, *, experiment_id: str, action: str | None = None) -> list[Job]:
    query = select(Job).where(Job.experiment_id == experiment_id, Job.status.in_([s.value for s in ACTIVE]))
    if action:
        query = query.where(Job.action == action)
    return list(session.scalars(query))


def active_using_dataset(session: Session, *, dataset_ids: set[str], experiment_ids: set[str]) -> list[Job]:
    rows = session.scalars(select(Job).where(Job.status.in_([s.value for s in ACTIVE])))
    return [r for r in rows if r.experiment_id in experiment_ids or r.dataset_id in dataset_ids]


def delete(session: Session, *, row: Job) -> JobOut:
    if row.status in {s.value for s in ACTIVE}:
        raise Conflict(f"Job {row.id} is {row.status}; cancel it before deleting it.")
    out = to_out(row)
    session.delete(row)
    return out
