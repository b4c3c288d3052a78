"""The annotation demo of `medcloud serve`: CT datasets, a real-time VISTA-3D experiment and an annotation job,
made on the first start and reused on the next; the CT writer's volumes (LPS-like and oblique)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE_CACHE
from helpers import dice, multipart_parts, nrrd_voxels, wait_for

from medcloud.config import Settings
from medcloud.demo.annotation import ANNOTATION_SPECS, DATASET, EVAL_DATASET, EXPERIMENT, LABELS
from medcloud.demo.ct_dataset import CtVolumes, write_ct_dataset
from medcloud.demo.setup import with_demo_models
from medcloud.devserver import create_key, medcloud_serve

ORG = "iasixjqzw1hj"


def test_ct_dataset_writer_labeled_unlabeled_lps_and_oblique(tmp_path: Path) -> None:
    small = CtVolumes(shape=(48, 40, 32), spacing=(1.0, 1.5, 2.5), rad_min=6, rad_max=8)
    manifest = json.loads(write_ct_dataset(tmp_path / "lps", n_labeled=1, n_unlabeled=2, volumes=small).read_text())
    entries = manifest["data"]
    assert ["label" in e for e in entries] == [True, False, False]
    image = nib.load(tmp_path / "lps" / entries[0]["image"]["path"][0])
    label = np.asarray(nib.load(tmp_path / "lps" / entries[0]["label"]["path"][0]).dataobj)
    assert image.shape == label.shape == (48, 40, 32) and image.get_data_dtype() == np.int16
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3], axis=0), (1.0, 1.5, 2.5))
    assert set(np.unique(label)) == {0, 3} and np.asarray(image.dataobj)[label == 0].max() < 0  # background < 0 HU

    oblique = write_ct_dataset(
        tmp_path / "oblique",
        n_labeled=1,
        n_unlabeled=0,
        volumes=CtVolumes(shape=(32, 32, 24), rad_min=4, rad_max=6, tilt_deg=20),
    )
    tilted = nib.load(oblique.parent / json.loads(oblique.read_text())["data"][0]["image"]["path"][0])
    z_axis = tilted.affine[:3, 2] / np.linalg.norm(tilted.affine[:3, 2])
    assert np.degrees(np.arccos(z_axis[2])) == pytest.approx(20, abs=1e-4)
    assert nib.load(oblique.parent / "imagesTr" / "ct_000.nii.gz").header.get_sform(coded=True)[1] == 1


def test_an_operators_bundles_are_kept(tmp_path: Path) -> None:
    import io

    settings = Settings(data_dir=tmp_path, vista3d_bundle="/models/vista3d.zip", deepedit_bundle="/models/de.zip")
    assert with_demo_models(settings, io.StringIO()) is settings
    assert not (tmp_path / "demo").exists()


def _seed_caches(data_dir: Path) -> None:
    """The trained demo bundles, from the per-checkout test cache (built there once), as a first start leaves them."""
    from medcloud.demo.bundles import ensure_demo_bundles
    from medcloud.families.deepedit.demo import ensure_demo_deepedit
    from medcloud.families.vista3d.demo import ensure_demo_vista3d

    bundles = data_dir / "demo" / "bundles"
    built = (
        ensure_demo_bundles(BUNDLE_CACHE)["segmentation"].parent,
        ensure_demo_vista3d(BUNDLE_CACHE).parent,
        ensure_demo_deepedit(BUNDLE_CACHE).parent,
    )
    for folder in built:
        shutil.copytree(folder, bundles / folder.name)


class Client:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/v1/orgs/{ORG}/", timeout=300)
        token = httpx.post(f"{url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **params: str) -> dict:
        resp = self.http.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()


def _wait_ready(log: Path, count: int, timeout_s: float = 600) -> str:
    """Wait for the `count`-th "Annotation demo ready" line of the server's log; return the log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        assert "Annotation demo: set-up failed" not in text, text[-3000:]
        if text.count("Annotation demo ready") >= count:
            return text
        time.sleep(0.5)
    raise AssertionError(f"the annotation demo was not ready within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _state(client: Client) -> dict:
    """Datasets by name, the demo experiment and its annotation jobs, once those are no longer Pending."""
    for _ in range(60):
        state = _read_state(client)
        if all(j["status"] != "Pending" for j in state["annotation"]):
            return state
        time.sleep(0.5)
    return state


def _read_state(client: Client) -> dict:
    datasets = {d["name"]: d["id"] for d in client.get("datasets")["datasets"]}
    experiments = [e for e in client.get("experiments", user_only="true")["experiments"] if e["name"] == EXPERIMENT]
    assert len(experiments) == 1
    jobs = client.get(f"experiments/{experiments[0]['id']}/jobs")["jobs"]
    return {
        "datasets": datasets,
        "experiment": experiments[0],
        "annotation": [j for j in jobs if j["action"] == "annotation"],
    }


def test_serve_prepares_the_annotation_demo_once_and_reuses_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _seed_caches(data)
    with medcloud_serve(data, demo=True) as server:
        log = _wait_ready(server.log, 1)
        assert "/viewer" in log and "created demo-ct, demo-ct-eval, demo-vista3d, annotation job" in log
        key = (data / "demo-api-key.txt").read_text().strip()
        client = Client(server.url, key)
        first = _state(client)
        exp = first["experiment"]
        assert {DATASET, EVAL_DATASET} <= set(first["datasets"])
        assert exp["realtime_infer"] is True and exp["network_arch"] == "monai_vista3d"
        assert exp["realtime_infer_request_timeout"] == 300
        assert (
            exp["train_datasets"] == [first["datasets"][DATASET]]
            and exp["inference_dataset"] == exp["train_datasets"][0]
        )
        assert exp["eval_dataset"] == first["datasets"][EVAL_DATASET] and exp["model_params"]["labels"] == LABELS
        [job] = first["annotation"]
        assert job["status"] == "Running" and job["specs"] == ANNOTATION_SPECS

        manifest = json.loads((data / "demo" / "ct-dataset" / "manifest.json").read_text())
        labeled = [e for e in manifest["data"] if "label" in e]
        assert len(labeled) == 2 and len(manifest["data"]) - len(labeled) >= 4
        root = data / "demo" / "ct-dataset"
        image = nib.load(root / labeled[0]["image"]["path"][0])
        assert image.shape == (256, 256, 128) and nib.aff2axcodes(image.affine) == ("L", "P", "S")
        truth = np.asarray(nib.load(root / labeled[0]["label"]["path"][0]).dataobj) == 3
        inside = [int(c.mean()) for c in truth.nonzero()]
        resp = client.http.post(
            f"experiments/{exp['id']}/jobs",
            json={
                "action": "inference",
                "specs": {
                    "image": labeled[0]["image"]["id"],
                    "bundle_params": {"points": [inside], "point_labels": [1], "label_prompt": [3]},
                },
            },
        )
        assert resp.status_code == 201, resp.text
        voxels = nrrd_voxels(next(iter(multipart_parts(resp).values())), truth.shape)
        assert dice(voxels == 3, truth) > 0.7

    with medcloud_serve(data, demo=True) as server:
        log = _wait_ready(server.log, 2)
        assert "all reused" in log.split("Annotation demo ready")[-1].splitlines()[0]
        assert "model host loaded, warm-up click answered" in log and "warm-up inference failed" not in log
        client = Client(server.url, key)
        again = _state(client)
        assert again["datasets"] == first["datasets"] and again["experiment"]["id"] == exp["id"]
        assert [j["id"] for j in again["annotation"]] == [job["id"]]  # no second annotation job
        assert again["annotation"][0]["status"] == "Running"
        # The model host came back (the set-up's warm-up inference loaded it): a class prompt finds the blob.
        resp = client.http.post(
            f"experiments/{exp['id']}/jobs",
            json={
                "action": "inference",
                "specs": {"image": labeled[0]["image"]["id"], "bundle_params": {"label_prompt": [3]}},
            },
        )
        assert resp.status_code == 201, resp.text
        voxels = nrrd_voxels(next(iter(multipart_parts(resp).values())), truth.shape)
        assert dice(voxels == 3, truth) > 0.7


def _trainer_pids(data_dir: Path) -> list[int]:
    """Processes of `python -m medcloud.demo.background DATA_DIR` (the demo's trainer) still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"medcloud.demo.background" in argv and str(data_dir).encode() in argv:
            found.append(int(entry.name))
    return found


def test_serve_answers_at_once_while_the_demo_trains_and_stops_without_waiting(tmp_path: Path, local_dataset) -> None:
    data = tmp_path / "data"  # nothing cached: the first start trains the demo networks (minutes)
    with medcloud_serve(data, demo=True, timeout_s=60) as server:
        health = httpx.get(f"{server.url}/api/v1/health/readiness").json()
        assert health["demo"]["state"] == "preparing" and health["demo"]["step"].startswith("training"), health
        log = wait_for(
            lambda: (
                "Demo: training the demo bundles (segmentation, classification)" in server.log.read_text()
                and server.log.read_text()
            ),
            timeout=60,
            what="the trainer's first step in the log",
        )
        assert "medcloud demo is ready" not in log  # guide 000's printout comes once the demo is ready
        assert _trainer_pids(data)

        key = create_key(data, ORG, "early-user")
        client = Client(server.url, key)
        assert client.get("datasets")["datasets"] == []
        dataset = client.http.post("datasets", json={"name": "mine", "client_url": str(local_dataset)})
        assert dataset.status_code == 201, dataset.text
        base = next(
            e["id"] for e in client.get("./experiments:base")["experiments"] if e["network_arch"] == "monai_vista3d"
        )
        body = {
            "name": "v3d",
            "network_arch": "monai_vista3d",
            "base_experiment": [base],
            "realtime_infer": True,
            "train_datasets": [dataset.json()["id"]],
        }
        early = client.http.post("experiments", json=body)
        assert early.status_code == 503, early.text
        assert "still being prepared" in early.json()["error_desc"]
        assert client.get("experiments", user_only="true")["experiments"] == []  # nothing half-made
        stop_started = time.monotonic()
    assert time.monotonic() - stop_started < 25 and server.proc.returncode != -9  # stopped by SIGTERM, not killed
    wait_for(lambda: not _trainer_pids(data), timeout=10, what="the trainer to end with the server")
