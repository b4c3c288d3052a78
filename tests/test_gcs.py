"""Google Cloud Storage datasets and workspaces against a real GCS emulator, with service-account keys.

The emulator (`services.gcs_emulator_server`) checks bearer tokens that its OAuth endpoint issues only for
JWTs signed by a registered key, so these tests show that medcloud really signs with the key it was given,
that a wrong key and a missing bucket are a clear 400, and that the key never appears in an answer or a log.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
import uuid
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from builders import seg_experiment, start, wait_status
from conftest import make_api
from helpers import wait_for
from objectstore_contract import Store, assert_contract, write_dataset
from services import GcsInfo, upload_folder_to_gcs

from medcloud.demo.synthetic import write_demo_dataset
from medcloud.errors import Invalid
from medcloud.sources.objectstore import ObjectStoreSource

pytest_plugins = ["services"]  # the session fixture `gcs_server`
EMAIL = "medcloud-reader@medcloud-test.iam.gserviceaccount.com"
FAST_S = 5.0  # a refused key or a missing bucket is reported within this many seconds


@pytest.fixture(scope="module")
def gcs_key(gcs_server: GcsInfo) -> str:
    """A service-account key file's content whose public key the emulator's token endpoint knows."""
    return gcs_server.service_account_key(EMAIL)


def key_fragments(key: str) -> list[str]:
    """Distinctive pieces of a key: one line of its private key's PEM body, and its private_key_id."""
    info = json.loads(key)
    return [info["private_key"].splitlines()[5], info["private_key_id"]]


def fresh_bucket(gcs: GcsInfo) -> str:
    bucket = f"medcloud-{uuid.uuid4().hex[:10]}"
    gcs.create_bucket(bucket)
    return bucket


# --- the data-source contract, on both URL forms ---


@pytest.mark.parametrize("form", ["gs-scheme", "emulator-url"])
def test_gcs_dataset_lists_and_fetches_the_stored_bytes(gcs_server: GcsInfo, gcs_key: str, tmp_path: Path, form: str):
    bucket = fresh_bucket(gcs_server)
    put = lambda folder, prefix: upload_folder_to_gcs(gcs_server, folder, bucket, prefix)  # noqa: E731
    if form == "gs-scheme":
        store = Store(form, f"gs://{bucket}", None, gcs_key, put, endpoint_url=gcs_server.endpoint)
    else:  # a self-hosted GCS endpoint: the service-account key says which kind of store it is
        store = Store(form, f"{gcs_server.endpoint}/{bucket}", None, gcs_key, put)
    files = write_dataset(tmp_path / "src")
    store.put(tmp_path / "src", "ds")
    grants = len(gcs_server.grants)
    source = store.open(store.url("ds"))
    assert source.location.protocol == "gcs"
    assert gcs_server.grants[grants:] == [EMAIL]  # the token was obtained with this very key
    assert_contract(source, files, tmp_path / "out")


def test_gcs_refuses_a_wrong_key_no_key_and_a_missing_bucket_fast(gcs_server: GcsInfo, gcs_key: str, tmp_path: Path):
    bucket = fresh_bucket(gcs_server)
    write_dataset(tmp_path / "src")
    upload_folder_to_gcs(gcs_server, tmp_path / "src", bucket, "ds")
    wrong = gcs_server.service_account_key(EMAIL, register=False)  # same account, a key Google never saw
    cases = [
        (f"gs://{bucket}/ds", wrong, "The storage credentials were rejected by gs://"),
        (f"gs://{bucket}/ds", None, "No credentials were given"),
        (f"gs://no-such-{bucket}/ds", gcs_key, f"The bucket no-such-{bucket} named in"),
        (f"gs://{bucket}/nothing-here", gcs_key, "No manifest.json found at"),
    ]
    for url, key, message in cases:
        started = time.monotonic()
        with pytest.raises(Invalid) as caught:
            ObjectStoreSource.open(url, None, key, endpoint_url=gcs_server.endpoint)
        assert time.monotonic() - started < FAST_S, url
        assert message in caught.value.message, caught.value.message
        for fragment in key_fragments(key) if key else []:
            assert fragment not in caught.value.message


@pytest.mark.parametrize(
    "change, message",
    [
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"}, "no valid PEM"),
        ({"token_uri": None}, "lacks token_uri"),
    ],
)
def test_a_malformed_service_account_key_is_refused_in_words(gcs_server, gcs_key, change, message):
    key = json.dumps({k: v for k, v in {**json.loads(gcs_key), **change}.items() if v is not None})
    with pytest.raises(Invalid) as caught:
        ObjectStoreSource.open("gs://any-bucket/ds", None, key, endpoint_url=gcs_server.endpoint)
    assert message in caught.value.message and "not a key" not in caught.value.message


# --- over the API ---


def test_gcs_dataset_over_the_api(api, gcs_server, gcs_key, tmp_path, monkeypatch, caplog):
    """A gs:// dataset (STORAGE_EMULATOR_HOST points gcsfs at the emulator, as it would a site's): created,
    its images listed and served, voxels and bytes those of the stored files, the key never echoed."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    caplog.set_level(logging.DEBUG)
    bucket = fresh_bucket(gcs_server)
    manifest = write_demo_dataset(tmp_path / "src", n_ct=2, n_rgb=0)
    upload_folder_to_gcs(gcs_server, manifest.parent, bucket, "ct")
    body = {"name": "gcs", "type": "semantic_segmentation", "format": "monai", "client_url": f"gs://{bucket}/ct"}
    resp = api.post("datasets", json={**body, "client_secret": gcs_key})
    assert resp.status_code == 201, resp.text
    dataset = resp.json()
    assert dataset["client_url"] == f"gs://{bucket}/ct"
    entries = json.loads(manifest.read_text())["data"]
    labeled, unlabeled = entries[0], entries[1]
    nxt = api.post(f"datasets/{dataset['id']}/jobs", json={"action": "nextimage", "specs": {}})
    assert nxt.status_code == 201, nxt.text
    assert nxt.json()["image"] == unlabeled["image"]["id"] and nxt.json()["meta"] == {"labels": []}

    image_id, rel = labeled["image"]["id"], labeled["image"]["path"][0]
    volume = api.get(f"datasets/{dataset['id']}/images/{image_id}/volume")
    assert volume.status_code == 200, volume.text
    (tmp_path / "v.nrrd").write_bytes(volume.content)
    voxels, _header = nrrd.read(str(tmp_path / "v.nrrd"))
    original = np.asarray(nib.load(manifest.parent / rel).dataobj)
    assert sorted(voxels.shape) == sorted(original.shape)
    assert np.array_equal(np.sort(voxels.ravel()), np.sort(original.ravel().astype(voxels.dtype)))

    cache = api.post(f"datasets/{dataset['id']}/jobs", json={"action": "cacheimage", "specs": {"image": image_id}})
    assert cache.status_code == 201, cache.text
    cache_root = api.ctx.settings.data_dir / "cache"
    cached = wait_for(lambda: list(cache_root.rglob(f"files/{rel}")), timeout=30, what="the cached image")
    assert [path.read_bytes() for path in cached] == [(manifest.parent / rel).read_bytes()]  # type: ignore[union-attr]

    everything = json.dumps(api.get("datasets").json()) + json.dumps(api.get(f"datasets/{dataset['id']}").json())
    for fragment in key_fragments(gcs_key):
        assert fragment not in everything and fragment not in resp.text and fragment not in caplog.text


def test_gcs_dataset_wrong_key_and_missing_bucket_are_400(api, gcs_server, gcs_key, monkeypatch, caplog):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    caplog.set_level(logging.DEBUG)
    bucket = fresh_bucket(gcs_server)
    wrong = gcs_server.service_account_key(EMAIL, register=False)
    body = {"name": "gcs", "type": "semantic_segmentation", "format": "monai"}
    cases = [
        (f"gs://{bucket}/ct", wrong, "credentials were rejected"),
        (
            f"gs://missing-{bucket}/ct",
            gcs_key,
            f"The bucket missing-{bucket} named in gs://missing-{bucket}/ct does not exist",
        ),
        (f"gs://{bucket}/ct", "not json", "must be a service-account JSON key"),
    ]
    for url, key, message in cases:
        resp = api.post("datasets", json={**body, "client_url": url, "client_secret": key})
        assert resp.status_code == 400 and message in resp.json()["error_desc"], resp.text
        for fragment in key_fragments(key) if key.startswith("{") else []:
            assert fragment not in resp.text and fragment not in caplog.text
    assert api.get("datasets").json()["datasets"] == []


def gcp_workspace(bucket: str, key: str, endpoint: str | None) -> dict:
    details = {"cloud_bucket_name": bucket, "credentials": key} | ({"endpoint_url": endpoint} if endpoint else {})
    return {"name": "gcs results", "cloud_type": "gcp", "cloud_specific_details": details}


def test_gcs_workspace_bad_key_or_bucket_is_400_and_the_key_is_write_only(api, gcs_server, gcs_key, caplog):
    caplog.set_level(logging.DEBUG)
    bucket = fresh_bucket(gcs_server)
    wrong = gcs_server.service_account_key(EMAIL, register=False)
    for name, key, message in [
        (bucket, wrong, "credentials were rejected"),
        (f"missing-{bucket}", gcs_key, f"The bucket missing-{bucket} named in gs://missing-{bucket} does not exist"),
    ]:
        resp = api.post("workspaces", json=gcp_workspace(name, key, gcs_server.endpoint))
        assert resp.status_code == 400 and message in resp.json()["error_desc"], resp.text
    resp = api.post("workspaces", json=gcp_workspace(bucket, gcs_key, gcs_server.endpoint))
    assert resp.status_code == 201, resp.text
    assert resp.json()["cloud_specific_details"] == {"cloud_bucket_name": bucket, "endpoint_url": gcs_server.endpoint}
    listed = json.dumps(api.get("workspaces").json())
    for fragment in key_fragments(gcs_key) + key_fragments(wrong):
        assert fragment not in listed and fragment not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("where", ["endpoint_url", "site-wide MEDCLOUD_GCS_ENDPOINT"])
def test_train_results_land_in_a_gcs_workspace(tmp_path, gcs_server, local_dataset, demo_zips, where):
    """A train job's worker uploads with the workspace's key (carried in its ticket) to the emulator."""
    settings = {"gcs_endpoint": gcs_server.endpoint} if where != "endpoint_url" else {}
    key = gcs_server.service_account_key(f"trainer-{uuid.uuid4().hex[:6]}@medcloud-test.iam.gserviceaccount.com")
    with make_api(tmp_path / "data", **settings) as api:
        bucket = fresh_bucket(gcs_server)
        endpoint = gcs_server.endpoint if where == "endpoint_url" else None
        ws = api.post("workspaces", json=gcp_workspace(bucket, key, endpoint))
        assert ws.status_code == 201, ws.text
        exp = seg_experiment(api, local_dataset, demo_zips, workspace=ws.json()["id"])
        job_id = start(api, exp, {"epochs": 1})
        done = wait_status(api, exp, job_id, {"Done", "Error"})
        assert done["status"] == "Done", done["result"]
        tar = api.get(f"experiments/{exp['id']}/jobs/{job_id}:download")
        with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
            checkpoint = archive.extractfile(f"{job_id}/results/models/model.pt").read()  # type: ignore[union-attr]
        names = gcs_server.names(bucket)
        assert f"results/{job_id}/models/model.pt" in names and f"results/{job_id}/logs.txt" in names
        assert gcs_server.read(bucket, f"results/{job_id}/models/model.pt") == checkpoint
        log = api.get(f"experiments/{exp['id']}/jobs/{job_id}/logs").text
        for fragment in key_fragments(key):
            assert fragment not in log and fragment not in json.dumps(done)
