"""Jobs: a backend handle (JSON) instead of a pid.

Revision ID: 0002_job_backend_handle
Revises: 0001_initial
Create Date: 2026-11-29

A recorded pid becomes the local backend's handle `{"backend": "local", "pid": <pid>}`, so a worker that
runs through the upgrade is still adopted. Tolerant of a database that `create_all` made from the new
models before this revision existed (the column already there, `pid` already gone).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_job_backend_handle"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns() -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns("jobs")}


def upgrade() -> None:
    columns = _columns()
    if "backend_handle" not in columns:
        with op.batch_alter_table("jobs") as batch:
            batch.add_column(sa.Column("backend_handle", sa.JSON(), nullable=True))
    if "pid" in columns:
        jobs = sa.table(
            "jobs", sa.column("id", sa.String), sa.column("pid", sa.Integer), sa.column("backend_handle", sa.JSON)
        )
        bind = op.get_bind()
        for job_id, pid in bind.execute(sa.select(jobs.c.id, jobs.c.pid).where(jobs.c.pid.is_not(None))).all():
            bind.execute(
                jobs.update().where(jobs.c.id == job_id).values(backend_handle={"backend": "local", "pid": pid})
            )
        with op.batch_alter_table("jobs") as batch:
            batch.drop_column("pid")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
    jobs = sa.table(
        "jobs", sa.column("id", sa.String), sa.column("pid", sa.Integer), sa.column("backend_handle", sa.JSON)
    )
    bind = op.get_bind()
    for job_id, handle in bind.execute(sa.select(jobs.c.id, jobs.c.backend_handle)).all():
        if isinstance(handle, dict) and handle.get("backend") == "local" and isinstance(handle.get("pid"), int):
            bind.execute(jobs.update().where(jobs.c.id == job_id).values(pid=handle["pid"]))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("backend_handle")
