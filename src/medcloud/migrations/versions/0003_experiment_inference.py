"""Experiments: the accelerated-inference report (`inference`, JSON).

Revision ID: 0003_experiment_inference
Revises: 0002_job_backend_handle
Create Date: 2026-12-05

Tolerant of a database that `create_all` made from the new models (the column already there).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_experiment_inference"
down_revision: str | Sequence[str] | None = "0002_job_backend_handle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if "inference" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("experiments")}:
        with op.batch_alter_table("experiments") as batch:
            batch.add_column(sa.Column("inference", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("inference")
