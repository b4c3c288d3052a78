"""Request and response shapes of datasets and dataset actions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DatasetAction(StrEnum):
    NEXTIMAGE = "nextimage"
    CACHEIMAGE = "cacheimage"
    NOTIFY = "notify"


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=256)
    description: str = ""
    type: str = Field(default="semantic_segmentation", min_length=1, max_length=64)
    format: str = Field(default="monai", min_length=1, max_length=32)
    client_url: str = Field(min_length=1, max_length=2048)
    client_id: str | None = None
    client_secret: str | None = None
    filters: str | None = None


class DatasetPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = None
    type: str | None = Field(default=None, min_length=1, max_length=64)
    format: str | None = Field(default=None, min_length=1, max_length=32)


class DatasetOut(BaseModel):
    id: str
    name: str
    description: str
    type: str
    format: str
    client_url: str
    filters: str | None
    created_on: datetime
    last_modified: datetime


class DatasetJob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: DatasetAction
    specs: dict[str, Any] = Field(default_factory=dict)


class CacheImageSpecs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(min_length=1)
    ttl: int | None = None
