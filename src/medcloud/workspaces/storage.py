"""Turns a workspace's cloud details into an fsspec location, and checks it by connecting."""

from __future__ import annotations

import json
from typing import Any

from medcloud import egress
from medcloud.config import Settings
from medcloud.errors import Invalid
from medcloud.sources import local_roots, objectstore
from medcloud.sources.objectstore import StoreLocation
from medcloud.workspaces.schemas import CloudType

LOCAL_REFUSED = "Workspaces on this server's own folders are not allowed (MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS)."
# Inline `cloud_details` of older clients: only these are kept in clear (URLs redacted); the rest is sealed.
PUBLIC_INLINE_KEYS = ("cloud_type", "cloud_bucket_name", "cloud_region", "account_name", "endpoint_url")


def default_endpoint(cloud_type: str, details: dict, settings: Settings) -> str | None:
    """The site-wide endpoint for a cloud type when the workspace names none."""
    if cloud_type == CloudType.AWS:
        return settings.aws_endpoint_url
    if cloud_type == CloudType.AZURE and settings.azure_blob_endpoint:
        return settings.azure_blob_endpoint.format(account=details.get("account_name") or "")
    if cloud_type == CloudType.GCP:
        return settings.gcs_endpoint
    return None


def workspace_url(cloud_type: str, details: dict) -> str:
    """The bucket's URL in the forms `parse_client_url` understands."""
    bucket = details["cloud_bucket_name"].strip("/")
    endpoint = (details.get("endpoint_url") or "").rstrip("/")
    if cloud_type == CloudType.LOCAL:
        return bucket if bucket.startswith("/") else "/" + bucket
    if cloud_type == CloudType.GCP:  # its endpoint goes to `parse_client_url` apart: http://host/bucket reads as S3
        return f"gs://{bucket}"
    if endpoint:
        return f"{endpoint}/{bucket}"
    if cloud_type == CloudType.AWS:
        return f"s3://{bucket}"
    if cloud_type == CloudType.AZURE:
        return f"https://{details.get('account_name')}.blob.core.windows.net/{bucket}"
    return f"gs://{bucket}"


def location(cloud_type: str, details: dict, secrets: dict, settings: Settings) -> StoreLocation:
    """An fsspec location for the bucket root (no manifest involved)."""
    if cloud_type == CloudType.LOCAL and not settings.dataset_allow_local_paths:
        raise Invalid(LOCAL_REFUSED)
    # An endpoint holding a secret (user info, a SAS query) is kept whole only among the sealed secrets.
    endpoint = secrets.get("endpoint_url") or details.get("endpoint_url")
    details = {**details, "endpoint_url": endpoint or default_endpoint(cloud_type, details, settings)}
    if cloud_type == CloudType.AZURE:
        client_id, client_secret = details.get("account_name"), secrets.get("access_key")
    elif cloud_type == CloudType.GCP:
        client_id, client_secret = None, secrets.get("credentials")
        return objectstore.parse_client_url(
            workspace_url(cloud_type, details), None, client_secret, endpoint_url=details["endpoint_url"]
        )
    else:
        client_id, client_secret = secrets.get("access_key"), secrets.get("secret_key")
    if cloud_type == CloudType.AZURE and not client_id:
        raise Invalid("Invalid Input. An azure workspace needs `account_name` and `access_key`.")
    return objectstore.parse_client_url(workspace_url(cloud_type, details), client_id, client_secret)


def split_secrets(public: dict[str, Any], secret: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move an `endpoint_url` holding a secret to the sealed part, leaving its redacted form in clear."""
    endpoint = public.get("endpoint_url")
    if isinstance(endpoint, str) and egress.has_secrets(endpoint):
        return {**public, "endpoint_url": egress.redact_url(endpoint)}, {**secret, "endpoint_url": endpoint}
    return public, secret


def split_inline(details: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inline `cloud_details` (flat or in the workspace shape): (kept in clear, to seal). Unknown keys are sealed."""
    flat = dict(details or {})
    flat.update(flat.pop("cloud_specific_details", None) or {})
    public = {k: v for k, v in flat.items() if k in PUBLIC_INLINE_KEYS and isinstance(v, str | None)}
    return split_secrets(public, {k: v for k, v in flat.items() if k not in public})


def check_policy(
    cloud_type: str | None, details: dict[str, Any], secrets: dict[str, Any], settings: Settings, *, org: str
) -> None:
    """What the client gave may be used here: local folders only when allowed and inside `org`'s roots
    (`sources/local_roots.py`), its endpoint and GCS `token_uri` under the egress policy (blocking: resolves
    links and names; storage SDKs resolve names again)."""
    if cloud_type == CloudType.LOCAL:
        if not settings.dataset_allow_local_paths:
            raise Invalid(LOCAL_REFUSED)
        if not isinstance(details.get("cloud_bucket_name"), str) or not details["cloud_bucket_name"].strip("/"):
            raise Invalid("Invalid Input. A local workspace needs `cloud_bucket_name`, the folder on this server.")
        folder = workspace_url(cloud_type, details)
        local_roots.check_folder(folder, org=org, settings=settings, what="Workspaces")
    policy = egress.Policy.from_settings(settings)
    endpoint = secrets.get("endpoint_url") or details.get("endpoint_url")
    if endpoint:
        egress.check_url(str(endpoint), policy, what="endpoint_url")
    credentials = secrets.get("credentials")
    if cloud_type == CloudType.GCP and credentials:
        try:
            info = json.loads(credentials) if isinstance(credentials, str) else credentials
        except ValueError:
            return  # not JSON: parsing the location says so
        if isinstance(info, dict) and info.get("token_uri"):
            egress.check_url(str(info["token_uri"]), policy, what="token_uri of the credentials")


def check(loc: StoreLocation) -> None:
    """Connect and list the bucket; raises Invalid with a sentence naming the cause."""
    objectstore.check_access(loc)
