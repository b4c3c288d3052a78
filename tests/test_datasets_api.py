"""Datasets over the API: creation on each store, clear 400s, nextimage, cacheimage, notify, ownership."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from builders import create_dataset, create_experiment, manifest_entries
from helpers import wait_for
from services import AZURITE_ACCOUNT, upload_folder_to_azure, upload_folder_to_s3

UNKNOWN = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def test_dataset_on_azurite_and_on_s3_and_secrets_never_come_back(api, azurite, s3_server, local_dataset):
    upload_folder_to_azure(azurite, local_dataset, "dsapi", "p")
    upload_folder_to_s3(s3_server, local_dataset, "dsapi", "p")
    bodies = [
        {"client_url": f"{azurite.endpoint}/dsapi/p", "client_id": AZURITE_ACCOUNT, "client_secret": azurite.key},
        {
            "client_url": f"{s3_server.endpoint_url}/dsapi/p/manifest.json",
            "client_id": s3_server.key,
            "client_secret": s3_server.secret,
        },
    ]
    for body in bodies:
        resp = api.post("datasets", json={"name": "remote", "type": "semantic_segmentation", **body})
        assert resp.status_code == 201, resp.text
        assert "client_secret" not in resp.json() and "client_id" not in resp.json()
        assert body["client_secret"] not in json.dumps(api.get(f"datasets/{resp.json()['id']}").json())
    db = sqlite3.connect(api.ctx.settings.data_dir / "medcloud.db")
    dump = "\n".join(db.iterdump())
    assert azurite.key not in dump and s3_server.secret not in dump  # encrypted at rest


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("refused", "Could not reach"),
        ("bad-key", "credentials were rejected"),
        ("no-manifest", "No manifest"),
        ("bad-json", "not valid JSON"),
        ("missing-file", "was not found"),
        ("escaping", ".."),
    ],
)
def test_dataset_creation_failures_are_400_naming_the_problem(api, azurite, local_dataset, tmp_path, case, fragment):
    manifest = json.loads((local_dataset / "manifest.json").read_text())
    url, key = f"{azurite.endpoint}/dsfail{case.replace('-', '')}/p", azurite.key
    if case == "refused":
        url = "http://127.0.0.1:9/devstoreaccount1/c/p"
    elif case == "bad-key":
        upload_folder_to_azure(azurite, local_dataset, "dsfailbadkey", "p")
        key = "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk="
    elif case == "no-manifest":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "x.txt").write_text("x")
        upload_folder_to_azure(azurite, tmp_path / "empty", "dsfailnomanifest", "p")
    else:
        folder = tmp_path / case
        folder.mkdir()
        if case == "bad-json":
            (folder / "manifest.json").write_text("{nope")
        elif case == "missing-file":
            (folder / "manifest.json").write_text(json.dumps(manifest))
        else:
            manifest["data"][0]["image"]["path"] = ["../../etc/passwd"]
            (folder / "manifest.json").write_text(json.dumps(manifest))
        upload_folder_to_azure(azurite, folder, f"dsfail{case.replace('-', '')}", "p")
    resp = api.post(
        "datasets", json={"name": "x", "client_url": url, "client_id": AZURITE_ACCOUNT, "client_secret": key}
    )
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error_desc"]
    assert key not in resp.json()["error_desc"]
    assert api.get("datasets").json()["datasets"] == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x"},
        {"name": "x", "client_url": 5},
        {"name": ["x"], "client_url": "/tmp"},
        {"name": "x", "client_url": "ftp://host/x"},
    ],
)
def test_invalid_dataset_bodies_are_400(api, body):
    resp = api.post("datasets", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error_desc"]
    assert api.get("datasets").json()["datasets"] == []


def test_dataset_crud_and_ownership(api, local_dataset):
    dataset_id = create_dataset(api, local_dataset)
    assert api.patch(f"datasets/{dataset_id}", json={"name": "renamed", "description": 3}).status_code == 400
    resp = api.patch(f"datasets/{dataset_id}", json={"name": "renamed"})
    assert resp.status_code == 200 and resp.json()["name"] == "renamed"
    assert [d["name"] for d in api.get("datasets").json()["datasets"]] == ["renamed"]
    assert api.get("datasets", params={"name": "renamed"}).json()["datasets"][0]["id"] == dataset_id
    assert api.get("datasets", params={"name": "!renamed"}).json()["datasets"] == []
    for user in ("bob",):
        assert api.get(f"datasets/{dataset_id}", user=user).status_code == 404
        assert api.patch(f"datasets/{dataset_id}", user=user, json={"name": "x"}).status_code == 404
        assert api.delete(f"datasets/{dataset_id}", user=user).status_code == 404
        assert api.post(f"datasets/{dataset_id}/jobs", user=user, json={"action": "nextimage"}).status_code == 404
    assert api.get("datasets", user="bob").json()["datasets"] == []
    assert api.get(f"datasets/{UNKNOWN}").status_code == 404
    assert api.delete(f"datasets/{dataset_id}").status_code == 200
    assert api.get(f"datasets/{dataset_id}").status_code == 404


def test_nextimage_serves_unlabeled_images_least_recently_served_first(api, local_dataset):
    dataset_id = create_dataset(api, local_dataset)
    entries = manifest_entries(local_dataset)
    unlabeled = {e["image"]["id"] for e in entries if "label" not in e}
    seen = []
    for _ in range(len(unlabeled)):
        resp = api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage", "specs": {}})
        assert resp.status_code == 201
        assert resp.json()["meta"] == {"labels": []}
        assert resp.json()["unlabeled"] == len(unlabeled)
        seen.append(resp.json()["image"])
    assert set(seen) == unlabeled  # every unlabeled image once before any repeats
    again = api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"}).json()["image"]
    assert again == seen[0]
    # it starts caching what it served
    wait_for(lambda: api.ctx.cache.lookup(dataset_id, seen[-1]), what="nextimage to cache the image")


def test_nextimage_when_everything_is_labeled_is_404(api, local_dataset):
    manifest = json.loads((local_dataset / "manifest.json").read_text())
    manifest["data"] = [e for e in manifest["data"] if "label" in e]
    (local_dataset / "manifest.json").write_text(json.dumps(manifest))
    dataset_id = create_dataset(api, local_dataset)
    resp = api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"})
    assert resp.status_code == 404 and resp.json()["error_desc"] == "No Unlabeled Images Found"


def test_cacheimage_fetches_in_background_and_inference_never_downloads_again(api, azurite, local_dataset, demo_zips):
    upload_folder_to_azure(azurite, local_dataset, "cacheonce", "p")
    resp = api.post(
        "datasets",
        json={
            "name": "az",
            "client_url": f"{azurite.endpoint}/cacheonce/p",
            "client_id": AZURITE_ACCOUNT,
            "client_secret": azurite.key,
        },
    )
    dataset_id = resp.json()["id"]
    entry = manifest_entries(local_dataset)[0]
    image_id = entry["image"]["id"]
    resp = api.post(
        f"datasets/{dataset_id}/jobs", json={"action": "cacheimage", "specs": {"image": image_id, "ttl": 60}}
    )
    assert resp.status_code == 201 and resp.json() == {}
    files = wait_for(lambda: api.ctx.cache.lookup(dataset_id, image_id), what="image cached")
    assert files[0].read_bytes() == (local_dataset / entry["image"]["path"][0]).read_bytes()
    # Remove the image from the store: inference must be served from the cache alone.
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("cacheonce").delete_blob(
        f"p/{entry['image']['path'][0]}"
    )
    exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
    resp = api.post(f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": image_id}})
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        ({}, "Spec is missing `image`"),
        ({"image": 3}, "`image` must be"),
        ({"image": "x", "ttl": "soon"}, "`ttl`"),
        ({"image": "x", "ttl": -5}, "`ttl` must be a positive"),
        ({"image": "no-such-image"}, "no-such-image"),
    ],
)
def test_cacheimage_bad_specs_are_400(api, local_dataset, specs, fragment):
    dataset_id = create_dataset(api, local_dataset)
    resp = api.post(f"datasets/{dataset_id}/jobs", json={"action": "cacheimage", "specs": specs})
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error_desc"]


def test_notify_validates_and_counts_every_entry_under_concurrency(api, local_dataset):
    from sqlalchemy import func, select

    from medcloud.datasets.orm import Notification

    dataset_id = create_dataset(api, local_dataset)
    jobs = f"datasets/{dataset_id}/jobs"
    bad = [{"added": [{"image": "a"}]}, {"moved": []}, {}, {"added": "x"}, {"updated": [{"image": 1, "label": "l"}]}]
    for specs in bad:
        assert api.post(jobs, json={"action": "notify", "specs": specs}).status_code == 400, specs
    statuses = []

    def send(i: int) -> None:
        statuses.append(
            api.post(
                jobs, json={"action": "notify", "specs": {"added": {"image": f"img-{i}", "label": f"lab-{i}"}}}
            ).status_code
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 20
    with api.ctx.db.session() as session:
        count = session.scalar(
            select(func.count()).select_from(Notification).where(Notification.dataset_id == dataset_id)
        )
    assert count == 20


def test_unknown_dataset_action_is_400(api, local_dataset):
    dataset_id = create_dataset(api, local_dataset)
    resp = api.post(f"datasets/{dataset_id}/jobs", json={"action": "explode"})
    assert resp.status_code == 400 and "action" in resp.json()["error_desc"]


def test_local_dataset_paths_can_be_forbidden(tmp_path, local_dataset):
    from conftest import make_api

    with make_api(tmp_path / "locked", dataset_allow_local_paths=False) as api:
        resp = api.post("datasets", json={"name": "x", "client_url": str(local_dataset)})
        assert resp.status_code == 400 and "not allowed" in resp.json()["error_desc"]
