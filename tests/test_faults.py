"""Faults against a real `medcloud serve` process: kill -9 mid-round and restart; 50 concurrent notifies."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from builders import SHAPE, SPLEEN
from dicom_data import store_ct, store_seg
from helpers import wait_for

from medcloud.devserver import create_key, medcloud_serve

ORG = "faults"


def client_for(server, key):
    token = httpx.post(f"{server.url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
    return httpx.Client(
        base_url=f"{server.url}/api/v1/orgs/{ORG}", headers={"Authorization": f"Bearer {token}"}, timeout=120
    )


@pytest.fixture
def setting(tmp_path, empty_orthanc, weak_bundle):
    data_dir = tmp_path / "server"
    return data_dir, create_key(data_dir, ORG, "u"), empty_orthanc, weak_bundle


def test_server_killed_mid_round_resumes_and_loses_nothing(setting):
    data_dir, key, orthanc, bundle = setting
    series = store_ct(orthanc, seed=90, shape=SHAPE, patient_id="TRAIN")
    with medcloud_serve(data_dir) as server:
        http = client_for(server, key)
        ds = http.post(
            "/datasets",
            json={"name": "d", "client_url": orthanc.url, "client_id": orthanc.user, "client_secret": orthanc.password},
        ).json()["id"]
        exp = http.post(
            "/experiments",
            json={
                "name": "e",
                "network_arch": "monai_segmentation",
                "train_datasets": [ds],
                "eval_dataset": ds,
                "bundle_url": str(bundle),
                "model_params": {"labels": SPLEEN},
            },
        ).json()["id"]
        cl = http.post(
            f"/experiments/{exp}/jobs",
            json={
                "action": "annotation",
                "specs": {"round_size": 1, "stop_criteria": {"max_rounds": 1}, "train_spec": {"epochs": 8}},
            },
        ).json()
        wait_for(lambda: http.get(f"/experiments/{exp}/jobs/{cl}").json()["status"] == "Running", what="CL running")
        seg = store_seg(orthanc, series, SPLEEN)
        http.post(
            f"/datasets/{ds}/jobs", json={"action": "notify", "specs": {"added": {"image": series.uid, "label": seg}}}
        )
        train = wait_for(
            lambda: [
                j
                for j in http.get(f"/experiments/{exp}/jobs").json()["jobs"]
                if j["action"] == "train" and j["status"] == "Running"
            ],
            timeout=60,
        )[0]
        os.kill(server.proc.pid, signal.SIGKILL)  # mid-round: the train worker runs on in its own session
        server.proc.wait()
    with medcloud_serve(data_dir) as server:
        http = client_for(server, key)
        done = wait_for(
            lambda: (
                (j := http.get(f"/experiments/{exp}/jobs/{train['id']}").json())["status"] in ("Done", "Error") and j
            ),
            timeout=300,
            what="the adopted train job",
        )
        assert done["status"] == "Done", done["result"]
        cl_job = wait_for(
            lambda: (j := http.get(f"/experiments/{exp}/jobs/{cl}").json())["status"] in ("Done", "Error") and j,
            timeout=60,
            what="the resumed controller",
        )
        assert cl_job["status"] == "Done" and cl_job["result"]["round"] == 1


def test_fifty_concurrent_notifies_are_all_counted_once(setting):
    data_dir, key, orthanc, _bundle = setting
    store_ct(orthanc, seed=91, shape=SHAPE)
    with medcloud_serve(data_dir) as server:
        http = client_for(server, key)
        ds = http.post(
            "/datasets",
            json={"name": "d", "client_url": orthanc.url, "client_id": orthanc.user, "client_secret": orthanc.password},
        ).json()["id"]

        def send(i: int) -> int:
            with client_for(server, key) as c:
                return c.post(
                    f"/datasets/{ds}/jobs",
                    json={"action": "notify", "specs": {"added": [{"image": f"1.2.3.{i}", "label": f"1.2.4.{i}"}]}},
                ).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(send, range(50)))
        assert codes == [201] * 50
    import sqlite3

    rows = (
        sqlite3.connect(data_dir / "medcloud.db")
        .execute("SELECT image_id FROM notifications WHERE dataset_id = ?", (ds,))
        .fetchall()
    )
    assert sorted(r[0] for r in rows) == sorted(f"1.2.3.{i}" for i in range(50))
