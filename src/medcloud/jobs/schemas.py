"""Response shape of jobs (API.md §7)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from medcloud.timestamps import UtcDatetime


class JobOut(BaseModel):
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
