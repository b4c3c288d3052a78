"""API timestamps: always UTC-aware, so they serialise as RFC 3339 `date-time` (with an offset)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def as_utc(value: datetime) -> datetime:
    """SQLite hands back the stored UTC times without their zone: say what they are."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
