"""The schema as `create_all` made it before migrations existed (jobs with a `pid` column).

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-29

A database made by `create_all` has these tables and no `alembic_version`: each table is created only
when missing (older databases may lack `api_key_states`), so upgrading such a database keeps its rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _owned() -> list[sa.Column]:
    """The columns of `db.Owned` (id, org, user, name, description, timestamps)."""
    return [
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.String(length=4096), nullable=False),
        *_timestamps(),
    ]


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_on", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=False),
    ]


def _table(existing: set[str], name: str, *items: sa.SchemaItem, indexes: Sequence[str] = ()) -> None:
    """Create the table and its plain indexes (`ix_<table>_<column>`) unless the table is there already."""
    if name in existing:
        return
    op.create_table(name, *items)
    for column in indexes:
        op.create_index(op.f(f"ix_{name}_{column}"), name, [column], unique=False)


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    _table(
        existing,
        "orgs",
        sa.Column("name", sa.String(length=128), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("name"),
    )
    _table(
        existing,
        "users",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    _table(
        existing,
        "datasets",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("source_kind", sa.String(length=16), nullable=False),
        sa.Column("client_url", sa.String(length=2048), nullable=False),
        sa.Column("filters", sa.String(length=2048), nullable=True),
        sa.Column("sealed_secrets", sa.Text(), nullable=True),
        *_owned(),
        sa.PrimaryKeyConstraint("id"),
        indexes=("org", "user_id"),
    )
    _table(
        existing,
        "experiments",
        sa.Column("network_arch", sa.String(length=64), nullable=False),
        sa.Column("base_experiment", sa.JSON(), nullable=False),
        sa.Column("train_datasets", sa.JSON(), nullable=False),
        sa.Column("eval_dataset", sa.String(length=36), nullable=True),
        sa.Column("inference_dataset", sa.String(length=36), nullable=True),
        sa.Column("realtime_infer", sa.Boolean(), nullable=False),
        sa.Column("realtime_infer_request_timeout", sa.Integer(), nullable=False),
        sa.Column("bundle_url", sa.String(length=2048), nullable=True),
        sa.Column("workspace", sa.String(length=36), nullable=True),
        sa.Column("cloud_details", sa.JSON(), nullable=False),
        sa.Column("sealed_cloud_secrets", sa.Text(), nullable=True),
        sa.Column("model_params", sa.JSON(), nullable=False),
        sa.Column("bundle_dir", sa.String(length=1024), nullable=False),
        *_owned(),
        sa.PrimaryKeyConstraint("id"),
        indexes=("org", "user_id"),
    )
    _table(
        existing,
        "jobs",
        sa.Column("experiment_id", sa.String(length=36), nullable=True),
        sa.Column("dataset_id", sa.String(length=36), nullable=True),
        sa.Column("parent_id", sa.String(length=36), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("specs", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat", sa.Float(), nullable=True),
        sa.Column("started", sa.Float(), nullable=True),
        *_owned(),
        sa.PrimaryKeyConstraint("id"),
        indexes=("experiment_id", "org", "parent_id", "status", "user_id"),
    )
    _table(
        existing,
        "workspaces",
        sa.Column("cloud_type", sa.String(length=16), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("sealed_secrets", sa.Text(), nullable=True),
        *_owned(),
        sa.PrimaryKeyConstraint("id"),
        indexes=("org", "user_id"),
    )
    _table(
        existing,
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
        indexes=("user_id",),
    )
    _table(
        existing,
        "memberships",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("org", sa.String(length=128), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(["org"], ["orgs.name"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "org"),
        indexes=("org", "user_id"),
    )
    _table(
        existing,
        "notifications",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(length=36), nullable=False),
        sa.Column("section", sa.String(length=16), nullable=False),
        sa.Column("image_id", sa.String(length=256), nullable=False),
        sa.Column("label_id", sa.String(length=256), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        indexes=("dataset_id",),
    )
    _table(
        existing,
        "served_images",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=36), nullable=False),
        sa.Column("image_id", sa.String(length=256), nullable=False),
        sa.Column("served_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id", "image_id"),
        indexes=("dataset_id",),
    )
    _table(
        existing,
        "api_key_states",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("org", sa.String(length=128), nullable=True),
        sa.Column("hint", sa.String(length=16), nullable=True),
        sa.Column("last_login", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("key_id"),
    )


def downgrade() -> None:
    for name in (
        "api_key_states",
        "served_images",
        "notifications",
        "memberships",
        "api_keys",
        "workspaces",
        "jobs",
        "experiments",
        "datasets",
        "users",
        "orgs",
    ):
        op.drop_table(name)
