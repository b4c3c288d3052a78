"""Response shape of jobs (API.md §7)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from medcloud.timestamps import UtcDatetime


class JobOut(BaseModel):
    """A job as the API shows it, read from its row (`JobOut.model_validate(row)`)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    parent_id: str | None
    action: str
    status: str
    specs: dict[str, Any]
    name: str
    description: str
    result: dict[str, Any]
    experiment_id: str | None
    dataset_id: str | None
    heartbeat: float | None = None  # Unix time the runner last saw the job's process alive
    created_on: UtcDatetime
    last_modified: UtcDatetime
