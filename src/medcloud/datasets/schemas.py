"""Request and response shapes of datasets and dataset actions."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medcloud.egress import redact_url
from medcloud.timestamps import UtcDatetime


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
    """A dataset as the API shows it, read from its row (`DatasetOut.model_validate(row)`)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    type: str
    format: str
    client_url: str
    filters: str | None
    created_on: UtcDatetime
    last_modified: UtcDatetime

    @field_validator("client_url")
    @classmethod
    def _redacted(cls, value: str) -> str:
        """Never a secret of the URL (user info, query values), rows stored before redaction too."""
        return redact_url(value)


class DatasetJob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: DatasetAction
    specs: dict[str, Any] = Field(default_factory=dict)


class CacheImageSpecs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(min_length=1)
    ttl: int | None = None


# The shapes below only describe the API in OpenAPI (api/openapi.py): the router parses `DatasetJob`
# and each action checks its own specs, with the sentences API.md asks for.


class NotifyEntry(BaseModel):
    image: str = Field(min_length=1, description="Image id.")
    label: str = Field(min_length=1, description="Label id (for DICOMweb, the SEG's SeriesInstanceUID).")


class NotifySpecs(BaseModel):
    """At least one section; each a list of entries or a single entry."""

    model_config = ConfigDict(extra="forbid")
    added: list[NotifyEntry] | NotifyEntry | None = None
    updated: list[NotifyEntry] | NotifyEntry | None = None
    removed: list[NotifyEntry] | NotifyEntry | None = None


class NextImageJob(BaseModel):
    action: Literal["nextimage"]
    specs: dict[str, Any] = Field(default_factory=dict, description="Ignored.")


class CacheImageJob(BaseModel):
    action: Literal["cacheimage"]
    specs: CacheImageSpecs


class NotifyJob(BaseModel):
    action: Literal["notify"]
    specs: NotifySpecs


class NextImageOut(BaseModel):
    image: str
    meta: dict[str, Any]
    unlabeled: int = Field(description="medcloud's addition: how many images are unlabeled, this one included.")


class SavedLabelOut(BaseModel):
    """What saving a label from the viewer answers (docs/api.md, "medcloud's additions for the viewer")."""

    image: str = Field(description="The image id.")
    label: str = Field(description="The label id (for DICOMweb, the stored SEG's SeriesInstanceUID).")
    notify: Literal["added", "updated"] = Field(description="How the change was recorded, as `notify` records it.")
    voxels: dict[str, int] = Field(description="Voxel count of each non-zero label value in the volume.")
