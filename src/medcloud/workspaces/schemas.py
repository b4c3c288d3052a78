"""Request and response shapes of workspaces."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from medcloud.timestamps import UtcDatetime

SECRET_DETAIL_KEYS = ("access_key", "secret_key", "account_key", "credentials")


class CloudType(StrEnum):
    AWS = "aws"
    AZURE = "azure"
    GCP = "gcp"
    LOCAL = "local"  # a folder on the server: our addition for self-hosted installs


class CloudDetails(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cloud_bucket_name: str = Field(min_length=1)
    cloud_region: str | None = None
    account_name: str | None = None
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    credentials: str | None = None  # GCS service-account JSON


class WorkspaceCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=256)
    description: str = ""
    cloud_type: CloudType
    cloud_specific_details: CloudDetails


class WorkspacePatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = None
    cloud_specific_details: CloudDetails | None = None


class WorkspaceOut(BaseModel):
    id: str
    name: str
    description: str
    cloud_type: str
    cloud_specific_details: dict
    created_on: UtcDatetime
    last_modified: UtcDatetime
