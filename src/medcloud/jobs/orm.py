"""The jobs table."""

from __future__ import annotations

from sqlalchemy import JSON, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from medcloud.db import Base, Owned


class Job(Base, Owned):
    __tablename__ = "jobs"
    experiment_id: Mapped[str | None] = mapped_column(String(36), index=True, default=None)
    dataset_id: Mapped[str | None] = mapped_column(String(36), default=None)
    parent_id: Mapped[str | None] = mapped_column(String(36), index=True, default=None)
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    specs: Mapped[dict] = mapped_column(default=dict)
    result: Mapped[dict] = mapped_column(default=dict)
    # The job backend's handle (execution/base.py `Handle`): {"backend": "local", "pid": ...} or a Ray submission id.
    backend_handle: Mapped[dict | None] = mapped_column(JSON, default=None)
    heartbeat: Mapped[float | None] = mapped_column(Float, default=None)
    started: Mapped[float | None] = mapped_column(Float, default=None)
