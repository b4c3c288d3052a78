"""What the API tests build through the API and wait on, in one place: datasets, experiments and jobs,
continual-learning rounds against a real Orthanc, the dataset folder the manifest and upload tests start
from, and the constants those tests share.

Plain functions and data only, each asserting the status it expects: a test file imports them from here,
never from another test file. Fixtures stay in conftest.py or next to the tests that use them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from dicom_data import store_seg
from helpers import dice, multipart_parts, nrrd_voxels, wait_for
from PIL import Image

from medcloud.imaging.synthetic_dicom import write_ct_series

REPO = Path(__file__).resolve().parent.parent  # the working folder of the `medcloud` subprocesses
SPLEEN = {"1": "spleen"}  # the labels of the demo segmentation bundle and of the SEGs stored in Orthanc
SHAPE = (48, 48, 32)  # the CT series of the continual-learning tests

# -- datasets, experiments and jobs ----------------------------------------------------------------------


def create_dataset(api, root, user="alice"):
    resp = api.post(
        "datasets",
        user=user,
        json={
            "name": "local",
            "type": "semantic_segmentation",
            "format": "monai",
            "client_url": str(root),
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def create_experiment(api, dataset_id, bundle_zip, **extra):
    body = {
        "name": "rt",
        "network_arch": "monai_custom",
        "train_datasets": [dataset_id],
        "eval_dataset": dataset_id,
        "realtime_infer": True,
        "bundle_url": f"file://{bundle_zip}",
        **extra,
    }
    resp = api.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def manifest_entries(root):
    return json.loads((root / "manifest.json").read_text())["data"]


def segmentation_body(dataset_id, demo_zips, name="train", **extra):
    """The body of a train-only experiment of the demo segmentation bundle on one dataset (train and eval)."""
    return {
        "name": name,
        "network_arch": "monai_segmentation",
        "train_datasets": [dataset_id],
        "eval_dataset": dataset_id,
        "bundle_url": str(demo_zips["segmentation"]),
        **extra,
    }


def seg_experiment(api, local_dataset, demo_zips, **extra):
    resp = api.post("experiments", json=segmentation_body(create_dataset(api, local_dataset), demo_zips, **extra))
    assert resp.status_code == 201, resp.text
    return resp.json()


def start(api, exp, specs, action="train"):
    resp = api.post(f"experiments/{exp['id']}/jobs", json={"action": action, "specs": specs})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()
    assert isinstance(job_id, str) and len(job_id) == 36  # a bare JSON string
    return job_id


def job(api, exp, job_id):
    return api.get(f"experiments/{exp['id']}/jobs/{job_id}").json()


def wait_status(api, exp, job_id, statuses, timeout=240):
    return wait_for(
        lambda: (j := job(api, exp, job_id))["status"] in statuses and j,
        timeout=timeout,
        what=f"job {job_id} to reach {statuses}",
    )


def server_image_ids(api, dataset_id: str) -> set[str]:  # noqa: ANN001
    """The image ids the server's data source for `dataset_id` lists."""
    from medcloud.datasets import service
    from medcloud.datasets.orm import Dataset

    with api.ctx.db.session() as session:
        row = session.get(Dataset, dataset_id)
        session.expunge(row)
    return set(service.source_of(row, api.ctx.box, settings=api.ctx.settings).image_ids())


# -- continual learning on a DICOMweb dataset (SEGs stored in Orthanc, then notify) -------------------------


def dataset_for(api, orthanc, patient):
    resp = api.post(
        "datasets",
        json={
            "name": patient,
            "type": "semantic_segmentation",
            "client_url": orthanc.url,
            "client_id": orthanc.user,
            "client_secret": orthanc.password,
            "filters": f"Modality=CT&PatientID={patient}",
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def held_out_dice(api, exp, dataset_id, series):
    resp = api.post(
        f"experiments/{exp['id']}/jobs",
        json={"action": "inference", "specs": {"image": series.uid, "dataset_id": dataset_id}},
    )
    assert resp.status_code == 201, resp.text
    return dice(nrrd_voxels(next(iter(multipart_parts(resp).values())), series.label.shape), series.label)


def notify(api, dataset_id, series, seg_uid):
    resp = api.post(
        f"datasets/{dataset_id}/jobs",
        json={
            "action": "notify",
            "specs": {"added": {"image": series.uid, "label": seg_uid}, "updated": [], "removed": []},
        },
    )
    assert resp.status_code == 201, resp.text


def annotate_round(api, orthanc, exp, cl_job, dataset_id, series, labels=SPLEEN):
    before = {j["id"] for j in api.get(f"experiments/{exp['id']}/jobs").json()["jobs"]}
    notified = time.monotonic()
    notify(api, dataset_id, series, store_seg(orthanc, series, labels))
    train = wait_for(
        lambda: [j for j in api.get(f"experiments/{exp['id']}/jobs").json()["jobs"] if j["id"] not in before],
        timeout=30,
        what="a train job",
    )[0]
    assert train["parent_id"] == cl_job and train["name"] == "Train Job for CL"
    assert time.monotonic() - notified < 5  # reacts to the notification, no 15 s polling
    return wait_status(api, exp, train["id"], {"Done", "Error"}, timeout=600)


# -- a dataset folder with no manifest yet (what `medcloud datasets build-manifest` and `upload` start from) --


def random_nifti(path: Path, seed: int, *, label: bool = False) -> None:
    rng = np.random.default_rng(seed)
    data = (
        (rng.random((16, 16, 8)) > 0.5).astype(np.uint8) if label else rng.normal(size=(16, 16, 8)).astype(np.float32)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))


def random_dicom_series(folder: Path, seed: int, *, extension: str = ".dcm") -> list[str]:
    """A 16x16x6 CT series written as one file per slice; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    hu = np.random.default_rng(seed).integers(-1000, 1000, size=(16, 16, 6)).astype(np.float32)
    names = []
    for k, ds in enumerate(write_ct_series(hu, seed=seed, patient_id=f"P{seed}")):
        name = f"slice{k:03d}{extension}"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    return names


def random_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size=(12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_dataset_folder(root: Path) -> Path:
    """imagesTr/{a,b}.nii.gz with labelsTr/{a,b}.nii.gz, imagesTr/ct1/ (DICOM, labelsTr/ct1.nii.gz),
    imagesTr/ct2/ (DICOM files without extension, unlabeled), photos/p1.png with p1_mask.png next to it,
    photos/p2.png unlabeled, and a README that is no image."""
    random_nifti(root / "imagesTr" / "a.nii.gz", 1)
    random_nifti(root / "imagesTr" / "b.nii.gz", 2)
    random_nifti(root / "labelsTr" / "a.nii.gz", 3, label=True)
    random_nifti(root / "labelsTr" / "b.nii.gz", 4, label=True)
    random_dicom_series(root / "imagesTr" / "ct1", 5)
    random_nifti(root / "labelsTr" / "ct1.nii.gz", 6, label=True)
    random_dicom_series(root / "imagesTr" / "ct2", 7, extension="")
    random_png(root / "photos" / "p1.png", 8)
    random_png(root / "photos" / "p1_mask.png", 9)
    random_png(root / "photos" / "p2.png", 10)
    (root / "README").write_text("not an image\n")
    return root
