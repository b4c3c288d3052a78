"""Job rows: create, read, list, progress, delete, and `transition()`, the only writer of `status`."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from medcloud.db import utcnow
from medcloud.errors import Conflict, NotFound
from medcloud.jobs.orm import Job
from medcloud.jobs.schemas import JobOut
from medcloud.jobs.states import ACTIVE, JobStatus, allowed

log = logging.getLogger(__name__)


def to_out(row: Job) -> JobOut:
    return JobOut.model_validate(row)


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


def transition(
    session: Session,
    row: Job,
    target: JobStatus,
    message: str | None = None,
    *,
    result: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move `row` from the status it holds to `target`, only if the database still has that status.

    One conditional UPDATE (`WHERE id = :id AND status = :from`): of two writers that read the same
    status, the first to commit wins and the other's write is a no-op. `result` is merged into the
    job's result and `values` (other columns) written with the move, never without it. Returns
    whether it moved; either way `row` is refreshed, so a loser sees the status that won.
    """
    current = JobStatus(row.status)
    if current == target:
        return False
    if not allowed(current, target):
        log.info("Job %s: %s -> %s refused by the state table", row.id, current, target)
        return False
    session.flush()  # pending ORM changes (heartbeat, pid) must not be lost by the refresh below
    table = Job.__table__
    moved = (
        session.execute(
            update(table)
            .where(table.c.id == row.id, table.c.status == current.value)
            .values(status=target.value, **(values or {}))
        ).rowcount
        == 1
    )
    if moved and (message is not None or result):
        extra = dict(result or {})
        if message is not None:
            extra["detailed_status"] = {"message": message}
        _merge_locked(session, row.id, extra)
    session.refresh(row)
    if moved:
        log.info("Job %s: %s -> %s%s", row.id, current, target, f" ({message})" if message else "")
    else:
        log.info("Job %s: %s -> %s lost to a concurrent change (now %s)", row.id, current, target, row.status)
    return moved


def merge_result(session: Session, row: Job, values: dict[str, Any], *, status: JobStatus | None = None) -> bool:
    """Merge `values` into the job's latest `result` (not the copy `row` holds); refresh `row`.

    With `status`, only while the job still has that status (a job canceled meanwhile keeps its
    result). Returns whether it wrote.
    """
    session.flush()
    table = Job.__table__
    claim = update(table).where(table.c.id == row.id)
    if status is not None:
        claim = claim.where(table.c.status == status.value)
    # Writing the row first takes its write lock (the database's on SQLite, the row's on PostgreSQL)
    # until commit: the read below is then the latest result and stays so until we write it back.
    claimed = session.execute(claim.values(last_modified=utcnow())).rowcount == 1
    if claimed:
        _merge_locked(session, row.id, values)
    session.refresh(row)
    return claimed


def _merge_locked(session: Session, job_id: str, values: dict[str, Any]) -> None:
    """Read-modify-write of `result`; the caller has already written the row in this transaction."""
    table = Job.__table__
    latest = session.execute(select(table.c.result).where(table.c.id == job_id)).scalar_one()
    session.execute(update(table).where(table.c.id == job_id).values(result={**(latest or {}), **values}))


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


def delete(session: Session, *, row: Job) -> JobOut:
    if row.status in {s.value for s in ACTIVE}:
        raise Conflict(f"Job {row.id} is {row.status}; cancel it before deleting it.")
    out = to_out(row)
    session.delete(row)
    return out
