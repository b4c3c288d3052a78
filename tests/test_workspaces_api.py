"""Workspaces over the API: checked by connecting, secrets write-only and encrypted, in-use refusal."""

from __future__ import annotations

import json
import sqlite3

import pytest
from builders import create_dataset
from services import AZURITE_ACCOUNT, s3_client

UNKNOWN = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.fixture
def bucket(s3_server):
    s3_client(s3_server).create_bucket(Bucket="wsbucket")
    return "wsbucket"


def s3_workspace(s3_server, bucket, **overrides):
    details = {
        "cloud_bucket_name": bucket,
        "access_key": s3_server.key,
        "secret_key": s3_server.secret,
        "endpoint_url": s3_server.endpoint_url,
        **overrides,
    }
    return {"name": "results", "cloud_type": "aws", "cloud_specific_details": details}


def test_workspace_lifecycle_secrets_write_only(api, s3_server, bucket):
    resp = api.post("workspaces", json=s3_workspace(s3_server, bucket))
    assert resp.status_code == 201, resp.text
    ws = resp.json()
    assert ws["cloud_specific_details"] == {"cloud_bucket_name": bucket, "endpoint_url": s3_server.endpoint_url}
    listed = api.get("workspaces").json()["workspaces"]
    assert [w["id"] for w in listed] == [ws["id"]]
    assert s3_server.secret not in json.dumps(listed)
    dump = "\n".join(sqlite3.connect(api.ctx.settings.data_dir / "medcloud.db").iterdump())
    assert s3_server.secret not in dump
    renamed = api.patch(f"workspaces/{ws['id']}", json={"name": "renamed"}).json()
    assert renamed["name"] == "renamed"
    assert api.get(f"workspaces/{ws['id']}", user="bob").status_code == 404
    assert api.delete(f"workspaces/{ws['id']}", user="bob").status_code == 404
    assert api.delete(f"workspaces/{ws['id']}").status_code == 200
    assert api.get(f"workspaces/{ws['id']}").status_code == 404


def test_azure_workspace_on_azurite(api, azurite):
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(azurite.connection_string).create_container("wscontainer")
    resp = api.post(
        "workspaces",
        json={
            "name": "az",
            "cloud_type": "azure",
            "cloud_specific_details": {
                "cloud_bucket_name": "wscontainer",
                "account_name": AZURITE_ACCOUNT,
                "access_key": azurite.key,
                "endpoint_url": azurite.endpoint,
            },
        },
    )
    assert resp.status_code == 201, resp.text
    bad = api.post(
        "workspaces",
        json={
            "name": "az",
            "cloud_type": "azure",
            "cloud_specific_details": {
                "cloud_bucket_name": "wscontainer",
                "account_name": AZURITE_ACCOUNT,
                "access_key": "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk=",
                "endpoint_url": azurite.endpoint,
            },
        },
    )
    assert bad.status_code == 400 and "credentials" in bad.json()["error_desc"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"cloud_bucket_name": "no-such-bucket"}, "does not exist"),
        ({"endpoint_url": "http://127.0.0.1:9"}, "Could not reach"),
    ],
)
def test_bad_workspace_storage_is_400(api, s3_server, bucket, change, fragment):
    resp = api.post("workspaces", json=s3_workspace(s3_server, bucket, **change))
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error_desc"]
    assert s3_server.secret not in resp.text
    assert api.get("workspaces").json()["workspaces"] == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x", "cloud_type": "dropbox", "cloud_specific_details": {"cloud_bucket_name": "b"}},
        {"name": "x", "cloud_type": "aws"},
        {"name": "x", "cloud_type": "aws", "cloud_specific_details": {}},
        {"name": "x", "cloud_type": "azure", "cloud_specific_details": {"cloud_bucket_name": "b"}},
    ],
)
def test_invalid_workspace_bodies_are_400(api, body):
    resp = api.post("workspaces", json=body)
    assert resp.status_code == 400, resp.text
    assert api.get("workspaces").json()["workspaces"] == []


def test_workspace_in_use_cannot_be_deleted(api, s3_server, bucket, local_dataset, demo_zips):
    ws = api.post("workspaces", json=s3_workspace(s3_server, bucket)).json()
    dataset_id = create_dataset(api, local_dataset)
    resp = api.post(
        "experiments",
        json={
            "name": "e",
            "network_arch": "monai_custom",
            "train_datasets": [dataset_id],
            "bundle_url": str(demo_zips["classification"]),
            "workspace": ws["id"],
        },
    )
    assert resp.status_code == 201, resp.text
    refused = api.delete(f"workspaces/{ws['id']}")
    assert refused.status_code == 400 and "in use" in refused.json()["error_desc"]
    assert api.delete(f"experiments/{resp.json()['id']}").status_code == 200
    assert api.delete(f"workspaces/{ws['id']}").status_code == 200
    assert api.get(f"workspaces/{UNKNOWN}").status_code == 404


def test_site_wide_azure_endpoint_serves_workspaces_that_name_none(tmp_path, azurite):
    """Guide 001 names no endpoint: a self-hosted site sets MEDCLOUD_AZURE_BLOB_ENDPOINT once."""
    from azure.storage.blob import BlobServiceClient
    from conftest import make_api

    BlobServiceClient.from_connection_string(azurite.connection_string).create_container("sitewide")
    endpoint = azurite.endpoint.replace(AZURITE_ACCOUNT, "{account}")
    with make_api(tmp_path / "site", azure_blob_endpoint=endpoint) as api:
        resp = api.post(
            "workspaces",
            json={
                "name": "az",
                "cloud_type": "azure",
                "cloud_specific_details": {
                    "cloud_bucket_name": "sitewide",
                    "account_name": AZURITE_ACCOUNT,
                    "access_key": azurite.key,
                },
            },
        )
        assert resp.status_code == 201, resp.text
        assert "endpoint_url" not in resp.json()["cloud_specific_details"]
