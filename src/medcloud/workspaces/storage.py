"""Turns a workspace's cloud details into an fsspec location, and checks it by connecting."""

from __future__ import annotations

from medcloud.config import Settings
from medcloud.errors import Invalid
from medcloud.sources import objectstore
from medcloud.sources.objectstore import StoreLocation
from medcloud.workspaces.schemas import CloudType


def default_endpoint(cloud_type: str, details: dict, settings: Settings) -> str | None:
    """The site-wide endpoint for a cloud type when the workspace names none."""
    if cloud_type == CloudType.AWS:
        return settings.aws_endpoint_url
    if cloud_type == CloudType.AZURE and settings.azure_blob_endpoint:
        return settings.azure_blob_endpoint.format(account=details.get("account_name") or "")
    return None


def workspace_url(cloud_type: str, details: dict) -> str:
    """The bucket's URL in the forms `parse_client_url` understands."""
    bucket = details["cloud_bucket_name"].strip("/")
    endpoint = (details.get("endpoint_url") or "").rstrip("/")
    if cloud_type == CloudType.LOCAL:
        return bucket if bucket.startswith("/") else "/" + bucket
    if endpoint:
        return f"{endpoint}/{bucket}"
    if cloud_type == CloudType.AWS:
        return f"s3://{bucket}"
    if cloud_type == CloudType.AZURE:
        return f"https://{details.get('account_name')}.blob.core.windows.net/{bucket}"
    return f"gs://{bucket}"


def location(cloud_type: str, details: dict, secrets: dict, settings: Settings) -> StoreLocation:
    """An fsspec location for the bucket root (no manifest involved)."""
    if not details.get("endpoint_url"):
        details = {**details, "endpoint_url": default_endpoint(cloud_type, details, settings)}
    if cloud_type == CloudType.AZURE:
        client_id, client_secret = details.get("account_name"), secrets.get("access_key")
    elif cloud_type == CloudType.GCP:
        client_id, client_secret = None, secrets.get("credentials")
    else:
        client_id, client_secret = secrets.get("access_key"), secrets.get("secret_key")
    if cloud_type == CloudType.AZURE and not client_id:
        raise Invalid("Invalid Input. An azure workspace needs `account_name` and `access_key`.")
    return objectstore.parse_client_url(workspace_url(cloud_type, details), client_id, client_secret)


def check(loc: StoreLocation) -> None:
    """Connect and list the bucket; raises Invalid with a sentence naming the cause."""
    objectstore.check_access(loc)
