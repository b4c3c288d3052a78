"""The annotation viewer end to end in a real browser against a real `medcloud serve`.

Scenario A (local dataset, no other service) and scenario B (a real Orthanc): sign in, next image,
auto-segment, a foreground and a background click, undo, a brush stroke, save; then the label is
in the dataset (a NIfTI next to the image and the manifest, or a DICOM SEG in Orthanc read back with
highdicom), the annotation job was notified and starts a train round, and the learning panel shows
it. Assertions are on voxels and on the request bodies the page sent, not on pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pytest
from browser import browser
from dicom_data import store_ct, store_seg
from dicomweb_client.api import DICOMwebClient
from helpers import dice, wait_for
from viewer_driver import ORG, Client, ViewerDriver

from medcloud.demo.synthetic import stable_id, write_synthetic_ct
from medcloud.devserver import create_key, medcloud_serve
from medcloud.imaging.seg import seg_to_labels
from medcloud.imaging.series import read_series

LABELS = {"1": "liver", "3": "spleen"}
SPLEEN = 3
SHAPE = (48, 48, 40)  # small: class prompts run the small VISTA-3D over every window on CPU


def _write_ct_dataset(root: Path) -> dict[str, np.ndarray]:
    """Two labeled CTs (the eval set) and two unlabeled ones; returns the truth of each unlabeled image."""
    data, truth = [], {}
    for i in range(4):
        image, label = f"imagesTr/ct_{i}.nii.gz", f"truth/ct_{i}.nii.gz"
        write_synthetic_ct(root / image, root / label, seed=7100 + i, shape=SHAPE, label_value=SPLEEN, dtype=np.int16)
        entry = {"image": {"path": [image], "id": stable_id(image)}}
        if i < 2:
            entry["label"] = {"path": [label], "id": stable_id(label)}
        else:
            truth[stable_id(image)] = np.asarray(nib.load(root / label).dataobj)
        data.append(entry)
    (root / "manifest.json").write_text(json.dumps({"label_key": ["label"], "data": data}, indent=2))
    return truth


def _vista_experiment(client: Client, dataset_id: str) -> str:
    base = next(
        e["id"] for e in client.get("./experiments:base")["experiments"] if e["network_arch"] == "monai_vista3d"
    )
    exp = client.post(
        "experiments",
        {
            "name": "annotate",
            "network_arch": "monai_vista3d",
            "base_experiment": [base],
            "train_datasets": [dataset_id],
            "eval_dataset": dataset_id,
            "inference_dataset": dataset_id,
            "realtime_infer": True,
            "realtime_infer_request_timeout": 600,  # a loaded CI machine may take a while per request
            "model_params": {"labels": LABELS},
        },
    )
    return exp["id"]


def _start_annotation(client: Client, exp_id: str) -> str:
    spec = {"round_size": 1, "stop_criteria": {"max_rounds": 1}, "train_spec": {"epochs": 1, "val_interval": 1}}
    return client.post(f"experiments/{exp_id}/jobs", {"action": "annotation", "specs": spec})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, vista_bundle: Path):  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("viewer") / "data"
    env = {"MEDCLOUD_VISTA3D_BUNDLE": str(vista_bundle)}
    with medcloud_serve(data_dir, env=env, timeout_s=180) as server:
        key = create_key(data_dir, ORG, "annotator")
        yield server, key, Client(server.url, key)


@pytest.fixture(scope="module")
def chromium():  # type: ignore[no-untyped-def]
    with browser() as instance:
        yield instance


def _annotate(driver: ViewerDriver, truth_of) -> dict:  # type: ignore[no-untyped-def]
    """The annotator's session on one image; returns what the test checks afterwards."""
    image_id = driver.next_image()
    truth = truth_of(image_id)
    meta_text = driver.page.locator("#meta").inner_text()
    assert image_id in meta_text
    cached = driver.requests_to("POST", "/jobs")
    assert any(
        r.body and json.loads(r.body) == {"action": "cacheimage", "specs": {"image": image_id, "ttl": 3600}}
        for r in cached
    )
    assert driver.requests_to("GET", f"/images/{image_id}/volume")

    # Auto-segment every label: the spleen-like sphere comes back as class 3.
    driver.auto_segment()
    specs = driver.last_inference_specs()
    assert specs["image"] == image_id and specs["bundle_params"] == {"label_prompt": [1, SPLEEN]}
    auto = driver.native_labels()
    assert auto.shape == truth.shape
    assert dice(auto == SPLEEN, truth > 0) > 0.6
    assert driver.state("v.counts[3]") == int((auto == SPLEEN).sum())
    liver_before = auto == 1

    # A foreground click inside the sphere, then a background click outside it, both for the spleen.
    driver.select_label(2)  # labels sorted by value: 1 liver, 3 spleen
    centre = tuple(int(round(c.mean())) for c in np.nonzero(truth))
    driver.click_voxel(centre, foreground=True)
    first = driver.last_inference_specs()["bundle_params"]
    assert first == {"label_prompt": [SPLEEN], "points": [list(centre)], "point_labels": [1]}
    outside = (centre[0], 4, centre[2]) if truth[centre[0], 4, centre[2]] == 0 else (4, 4, centre[2])
    after_first = driver.native_labels()
    driver.click_voxel(outside, foreground=False)
    second = driver.last_inference_specs()["bundle_params"]
    assert second == {"label_prompt": [SPLEEN], "points": [list(centre), list(outside)], "point_labels": [1, 0]}
    after_second = driver.native_labels()
    assert after_second[outside] != SPLEEN and after_second[centre] == SPLEEN
    assert np.array_equal(after_second == 1, liver_before)  # a click on the spleen keeps the other labels
    assert dice(after_second == SPLEEN, truth > 0) > 0.6

    # Undo takes back the second click: the labels and the click list are as after the first.
    driver.undo()
    assert np.array_equal(driver.native_labels(), after_first)
    assert driver.state("v.state.clicks.points") == [list(centre)]

    # A brush stroke with the spleen label in a corner far from the sphere.
    corner = (6, SHAPE[1] - 8, centre[2])
    before_brush = driver.native_labels()
    driver.brush_stroke(corner)
    edited = driver.native_labels()
    painted = (edited != before_brush) & (edited == SPLEEN)
    assert painted.sum() >= 3 and painted[corner]
    assert set(np.nonzero(edited != before_brush)[2]) == {corner[2]}  # an axial stroke stays on its slice

    answer = driver.save()
    put = driver.requests_to("PUT", f"/images/{image_id}/label")[-1]
    return {"image_id": image_id, "edited": edited, "answer": answer, "put_body": put.body}


def _parse_put(body: bytes, shape: tuple[int, ...]) -> np.ndarray:
    header, _, _ = body.partition(b"\n\n")
    assert b"type: uint8" in header and b"encoding: raw" in header
    return np.frombuffer(body[-int(np.prod(shape)) :], np.uint8).reshape(shape, order="F")


def _wait_train_round(client: Client, exp_id: str, annotation_id: str) -> dict:
    return wait_for(
        lambda: next(
            (
                j
                for j in client.get(f"experiments/{exp_id}/jobs")["jobs"]
                if j.get("parent_id") == annotation_id and j["action"] == "train"
            ),
            None,
        ),
        timeout=120,
        what="the annotation job to start a train round from the saved label",
    )


def test_scenario_a_local_dataset(served, chromium, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, key, client = served
    root = tmp_path / "ct"
    truth = _write_ct_dataset(root)
    dataset_id = client.post("datasets", {"name": "ct", "client_url": str(root)})["id"]
    exp_id = _vista_experiment(client, dataset_id)
    annotation_id = _start_annotation(client, exp_id)

    driver = ViewerDriver.open(chromium, server.url)
    page = driver.page
    assert page.input_value("#org") == "iasixjqzw1hj"  # the server's demo org is offered first

    # A wrong key shows the API's own error sentence.
    driver.sign_in("not-a-key", ORG)
    page.wait_for_selector("#error:not([hidden])")
    refused = httpx.post(f"{server.url}/api/v1/login", json={"ngc_api_key": "not-a-key"}).json()["error_desc"]
    assert driver.error_text() == refused

    driver.sign_in(key, ORG)
    driver.wait_ready()
    assert driver.state("v.state.experiment.id") == exp_id
    names = page.locator("#labels li .name").all_inner_texts()
    assert names == ["1 liver", "3 spleen"]

    done = _annotate(driver, truth.__getitem__)
    image_id, edited, answer = done["image_id"], done["edited"], done["answer"]
    assert np.array_equal(_parse_put(done["put_body"], edited.shape), edited)
    assert answer["notify"] == "added" and answer["image"] == image_id
    assert {int(k): v for k, v in answer["voxels"].items()} == {
        int(v): int((edited == v).sum()) for v in np.unique(edited) if v
    }

    # The label is next to the image, in the manifest, with the edited voxels and the image's grid.
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next(e for e in manifest["data"] if e["image"]["id"] == image_id)
    assert entry["label"]["id"] == answer["label"]
    label_path = root / entry["label"]["path"][0]
    assert label_path.parent == (root / entry["image"]["path"][0]).parent
    saved = nib.load(label_path)
    assert np.array_equal(np.asarray(saved.dataobj), edited)
    np.testing.assert_allclose(saved.affine, nib.load(root / entry["image"]["path"][0]).affine, atol=1e-4)

    # The notification counted: the annotation job starts a train round, and the panel shows it.
    train = _wait_train_round(client, exp_id, annotation_id)
    assert train["name"] == "Train Job for CL"
    page.wait_for_selector("#learning tbody tr", timeout=30_000)

    # The next image is the other unlabeled one.
    second = driver.next_image()
    assert second != image_id and second in truth
    page.screenshot(path=str(tmp_path / "viewer-scenario-a.png"))
    assert [e for e in page.errors if "status of 401" not in e] == []  # only the wrong key's refusal


def test_scenario_b_orthanc(served, chromium, empty_orthanc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, key, client = served
    series = store_ct(empty_orthanc, seed=7200, shape=SHAPE, patient_id="VIEWER")
    labeled = store_ct(empty_orthanc, seed=7201, shape=SHAPE, patient_id="VIEWER")
    store_seg(empty_orthanc, labeled, {"3": "spleen"})
    dataset_id = client.post(
        "datasets",
        {
            "name": "pacs",
            "client_url": empty_orthanc.url,
            "client_id": empty_orthanc.user,
            "client_secret": empty_orthanc.password,
            "filters": "Modality=CT&PatientID=VIEWER",
        },
    )["id"]
    exp_id = _vista_experiment(client, dataset_id)
    annotation_id = _start_annotation(client, exp_id)

    driver = ViewerDriver.open(chromium, server.url)
    page = driver.page
    driver.sign_in(key, ORG)
    driver.wait_ready()
    page.select_option("#experiment", exp_id)
    driver.wait_until("(id) => window.medcloudViewer.state.experiment.id === id", exp_id)

    done = _annotate(driver, lambda uid: {series.uid: series.label * SPLEEN}[uid])
    edited, answer = done["edited"], done["answer"]
    assert done["image_id"] == series.uid and answer["notify"] == "added"

    # The SEG is in Orthanc (QIDO-RS), references the CT series, and holds the edited volume.
    found = empty_orthanc.session().get(
        f"{empty_orthanc.url}/series", params={"Modality": "SEG", "SeriesInstanceUID": answer["label"]}
    )
    assert found.status_code == 200 and len(found.json()) == 1
    study = found.json()[0]["0020000D"]["Value"][0]
    assert study == series.study_uid
    dicomweb = DICOMwebClient(url=empty_orthanc.url, session=empty_orthanc.session())
    (instance,) = dicomweb.search_for_instances(study, answer["label"])
    sop = instance["00080018"]["Value"][0]
    seg = hd.seg.Segmentation.from_dataset(dicomweb.retrieve_instance(study, answer["label"], sop))
    assert {s.SegmentLabel for s in seg.SegmentSequence} == {LABELS[str(v)] for v in np.unique(edited) if v}
    volume = read_series(series.datasets)
    assert np.array_equal(seg_to_labels(seg, volume, LABELS), edited)

    train = _wait_train_round(client, exp_id, annotation_id)
    assert train["status"] in {"Pending", "Running", "Done"}
    assert not page.errors, page.errors
