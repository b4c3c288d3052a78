"""The workspaces table; credentials are stored sealed, never in clear."""

from __future__ import annotations

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from medcloud.db import Base, Owned


class Workspace(Base, Owned):
    __tablename__ = "workspaces"
    cloud_type: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict] = mapped_column(default=dict)  # the non-secret cloud_specific_details
    sealed_secrets: Mapped[str | None] = mapped_column(Text, default=None)
