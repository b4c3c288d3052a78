"""DICOMweb datasets over the API against a real Orthanc: errors, nextimage, inference geometry, SEG training."""

from __future__ import annotations

import threading

from builders import SPLEEN, segmentation_body, start, wait_status
from dicom_data import store_ct, store_seg
from helpers import dice, multipart_parts, nrrd_voxels, wait_for

from medcloud.imaging.synthetic_dicom import SAGITTAL


def dicom_dataset(api, orthanc, **extra):
    body = {
        "name": "pacs",
        "type": "semantic_segmentation",
        "format": "monai",
        "client_url": orthanc.url,
        "client_id": orthanc.user,
        "client_secret": orthanc.password,
        **extra,
    }
    resp = api.post("datasets", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_dicomweb_dataset_errors_name_the_cause(api, empty_orthanc):
    wrong = api.post(
        "datasets",
        json={"name": "x", "client_url": empty_orthanc.url, "client_id": "orthanc", "client_secret": "wrong-password"},
    )
    assert wrong.status_code == 400 and "rejected the credentials" in wrong.json()["error_desc"]
    assert "wrong-password" not in wrong.text
    refused = api.post(
        "datasets",
        json={
            "name": "x",
            "client_url": "http://127.0.0.1:9/dicom-web",
            "client_id": "orthanc",
            "client_secret": "orthanc",
        },
    )
    assert refused.status_code == 400 and "refused" in refused.json()["error_desc"]
    bad_filter = api.post(
        "datasets",
        json={
            "name": "x",
            "client_url": empty_orthanc.url,
            "client_id": "orthanc",
            "client_secret": "orthanc",
            "filters": "Modality",
        },
    )
    assert bad_filter.status_code == 400
    assert api.get("datasets").json()["datasets"] == []


def test_nextimage_meta_least_recently_served_and_seg_removes_the_series(api, empty_orthanc):
    first = store_ct(empty_orthanc, seed=11, shape=(32, 32, 16))
    second = store_ct(empty_orthanc, seed=12, shape=(32, 32, 16))
    dataset_id = dicom_dataset(api, empty_orthanc)
    answers = []

    def ask():
        answers.append(api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"}).json())

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {a["image"] for a in answers} == {first.uid, second.uid}  # two annotators, two series
    meta = next(a["meta"] for a in answers if a["image"] == first.uid)
    assert meta["StudyInstanceUID"] == first.study_uid and meta["SeriesInstanceUID"] == first.uid
    assert meta["Modality"] == "CT" and meta["PatientID"] == "P11"
    assert meta["RetrieveURL"].endswith(f"/studies/{first.study_uid}/series/{first.uid}")
    assert {"StudyDate", "StudyTime"} <= set(meta)
    store_seg(empty_orthanc, first, SPLEEN)
    for _ in range(3):
        assert api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"}).json()["image"] == second.uid
    store_seg(empty_orthanc, second, SPLEEN)
    none = api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"})
    assert none.status_code == 404 and none.json()["error_desc"] == "No Unlabeled Images Found"


def test_inference_on_a_sagittal_shuffled_series_lands_on_the_series_grid(api, empty_orthanc, demo_zips):
    series = store_ct(empty_orthanc, seed=21, orientation=SAGITTAL, spacing=(1.5, 1.5, 2.0))
    dataset_id = dicom_dataset(api, empty_orthanc)
    assert (
        api.post(
            f"datasets/{dataset_id}/jobs", json={"action": "cacheimage", "specs": {"image": series.uid}}
        ).status_code
        == 201
    )
    wait_for(lambda: api.ctx.cache.lookup(dataset_id, series.uid), what="series cached")
    empty_orthanc.delete_series(series.uid)  # inference must not need the server any more
    resp = api.post(
        "experiments",
        json={
            "name": "seg",
            "network_arch": "monai_custom",
            "inference_dataset": dataset_id,
            "realtime_infer": True,
            "bundle_url": str(demo_zips["segmentation"]),
        },
    )
    exp = resp.json()
    resp = api.post(f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": series.uid}})
    assert resp.status_code == 201, resp.text
    parts = multipart_parts(resp)
    assert list(parts) == [f"{series.uid}_seg.nrrd"]
    seg = nrrd_voxels(parts[f"{series.uid}_seg.nrrd"], series.label.shape)
    assert dice(seg, series.label) > 0.8  # voxel order = the series' (column, row, slice by position)


def test_training_reads_seg_labels_from_dicomweb(api, empty_orthanc, demo_zips):
    labeled = [store_ct(empty_orthanc, seed=30 + i, shape=(48, 48, 32)) for i in range(2)]
    for series in labeled:
        store_seg(empty_orthanc, series, SPLEEN)
    dataset_id = dicom_dataset(api, empty_orthanc)
    exp = api.post(
        "experiments",
        json=segmentation_body(dataset_id, demo_zips, name="t", model_params={"labels": SPLEEN}),
    ).json()
    job_id = start(api, exp, {"epochs": 1, "finetune": True})
    done = wait_status(api, exp, job_id, {"Done", "Error"})
    assert done["status"] == "Done", done["result"]
    assert done["result"]["key_metric"] > 0.7  # the SEG spheres were read onto the right grid
