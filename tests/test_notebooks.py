"""The hosted service's public notebooks (NVIDIA/monai-cloud-api) run against one `medcloud serve`.

Each test does what one notebook's code cells do, in order, with `requests` and the notebook's own assertions,
changing only the host, the key, the storage (Azurite: datasets' manifests and the experiments' workspace) and
where the data comes from; then it checks content (voxels, checkpoints). The cells are quoted by number from
`/work/notebooks/<name>.py.txt`.

The server runs as the notebooks expect it: the small demo VISTA-3D as `MEDCLOUD_VISTA3D_BUNDLE`, the DeepEdit base
experiment (`MEDCLOUD_DEEPEDIT_BUNDLE`) when this checkout can build its demo bundle, results in the notebooks'
layout (`MEDCLOUD_RESULTS_LAYOUT=ngc`: `{bucket}/shared/orgs/{org}/users/{user}/jobs/{job}/`), and a bundle
mirror (`MEDCLOUD_BUNDLE_MIRROR`) holding the model zoo's `spleen_ct_segmentation` (its own configs, random weights)
under the official NGC URL's file name, so the notebooks' `bundle_url` is used unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
from guides import create_key, medcloud_serve
from helpers import dice, wait_for
from local_http import http_server
from model_zoo import MODEL_ZOO, NO_MODEL_ZOO, SPLEEN_CT_SEGMENTATION_URL, mirror_server, mirror_zoo_bundle
from requests_toolbelt.multipart.decoder import MultipartDecoder
from services import AZURITE_ACCOUNT, AzuriteInfo, upload_folder_to_azure

from medcloud.demo.ct_dataset import CtVolumes, write_ct_dataset

ORG = "iasixjqzw1hj"  # the notebooks' default org
DATA = "nbdata"  # the container of the datasets' manifests and images
BUCKET = "nbresults"  # the experiments' workspace (`cs_bucket`)
SMALL = CtVolumes(shape=(64, 64, 64), rad_min=12, rad_max=18)
# The zoo's spleen train.json crops 96³ patches (RandCropByPosNegLabeld) after resampling to 1.5x1.5x2 mm.
ZOO = CtVolumes(shape=(96, 96, 96), rad_min=12, rad_max=18)
SPLEEN = 3  # the small demo VISTA-3D's class
JOB_TIMEOUT_S = 300


@dataclass(frozen=True)
class Data:
    """One synthetic CT dataset: its URL on Azurite, the local copy, and every image's true mask (0/1)."""

    url: str
    root: Path
    entries: list[dict]
    truth: dict[str, np.ndarray]  # image id -> mask

    def first(self, labeled: bool) -> dict:
        return next(e for e in self.entries if ("label" in e) == labeled)


@dataclass(frozen=True)
class Notebooks:
    """The running server and what the notebooks' parameter cells are filled with."""

    host_url: str
    key: str
    azurite: AzuriteInfo
    data: dict[str, Data]
    zoo_folder: Path | None  # the spleen bundle the mirror serves (same weights), for reference runs
    deepedit: str | None  # why the DeepEdit base experiment cannot be offered, when it cannot

    def cloud_details(self) -> dict:
        """Cell "experiment_cloud_details" of the notebooks, filled for Azurite."""
        return {
            "cloud_type": "azure",
            "cloud_file_type": "folder",
            "cloud_specific_details": {
                "cloud_bucket_name": BUCKET,
                "account_name": AZURITE_ACCOUNT,
                "access_key": self.azurite.key,
            },
        }

    def dataset_body(self, name: str, description: str, data: str) -> dict:
        return {
            "name": name,
            "description": description,
            "type": "semantic_segmentation",
            "format": "monai",
            "client_url": self.data[data].url,
            "client_id": AZURITE_ACCOUNT,
            "client_secret": self.azurite.key,
        }


@dataclass(frozen=True)
class Session:
    """What a notebook's login cell leaves: `base_url`, `headers`, `user_id`."""

    base_url: str
    headers: dict[str, str]
    user_id: str


def write_data(
    root: Path, *, n_labeled: int, n_unlabeled: int, label_value: int, seed_from: int, volumes: CtVolumes = SMALL
) -> Path:
    """Images and masks of every volume; the manifest lists labels of the first `n_labeled` only.

    The masks of the unlabeled ones go to `root/truth/` (not uploaded): what the content checks compare with.
    """
    data_root = root / "data"
    write_ct_dataset(
        data_root, n_labeled=n_labeled + n_unlabeled, n_unlabeled=0, volumes=volumes, seed_from=seed_from,
        label_value=label_value, prefix=root.name,
    )  # fmt: skip
    manifest = json.loads((data_root / "manifest.json").read_text())
    (root / "truth").mkdir()
    for entry in manifest["data"][n_labeled:]:
        label = entry.pop("label")
        shutil.move(data_root / label["path"][0], root / "truth" / Path(label["path"][0]).name)
    (data_root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return data_root


def truth_of(root: Path, entries: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for entry in entries:
        name = Path(entry["image"]["path"][0]).name
        path = root / "data" / "labelsTr" / name
        path = path if path.is_file() else root / "truth" / name
        out[entry["image"]["id"]] = (np.asarray(nib.load(str(path)).dataobj) > 0).astype(np.uint8)
    return out


DATASETS = {  # name: (labeled, unlabeled, label value, first seed)
    "vista_train": (2, 0, SPLEEN, 9100),
    "vista_val": (1, 0, SPLEEN, 9200),
    "vista_infer": (0, 2, SPLEEN, 9300),
    "annotate": (1, 2, SPLEEN, 9400),
    "spleen": (3, 0, 1, 9500),  # spleen_ct_segmentation: 2 output channels, labels 0/1
}
VOLUMES = {"spleen": ZOO}


@pytest.fixture(scope="module")
def data(azurite, tmp_path_factory) -> dict[str, Data]:
    out = {}
    for name, (labeled, unlabeled, value, seed) in DATASETS.items():
        root = tmp_path_factory.mktemp(name) / name
        root.mkdir()
        data_root = write_data(
            root, n_labeled=labeled, n_unlabeled=unlabeled, label_value=value, seed_from=seed,
            volumes=VOLUMES.get(name, SMALL),
        )  # fmt: skip
        upload_folder_to_azure(azurite, data_root, DATA, name)
        entries = json.loads((data_root / "manifest.json").read_text())["data"]
        out[name] = Data(f"{azurite.endpoint}/{DATA}/{name}/manifest.json", data_root, entries, truth_of(root, entries))
    return out


def deepedit_env(folder: Path) -> tuple[dict[str, str], str | None]:
    """`MEDCLOUD_DEEPEDIT_BUNDLE` for the server, or why this checkout cannot build the DeepEdit demo bundle."""
    try:
        from medcloud.families.deepedit.demo import ensure_demo_deepedit
    except ImportError as exc:
        return {}, f"medcloud.families.deepedit.demo.ensure_demo_deepedit is not importable ({exc})"
    return {"MEDCLOUD_DEEPEDIT_BUNDLE": str(ensure_demo_deepedit(folder))}, None


@pytest.fixture(scope="module")
def notebooks(azurite, data, vista_bundle, tmp_path_factory) -> Iterator[Notebooks]:
    from azure.storage.blob import BlobServiceClient
    from conftest import BUNDLE_CACHE

    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(BUCKET)
    tmp = tmp_path_factory.mktemp("notebooks")
    mirror = tmp / "mirror"
    mirror.mkdir()
    zoo_folder = None
    if MODEL_ZOO.is_dir():
        _, zoo_folder = mirror_zoo_bundle("spleen_ct_segmentation", SPLEEN_CT_SEGMENTATION_URL, mirror, seed=7)
    extra, deepedit = deepedit_env(BUNDLE_CACHE)
    data_dir = tmp / "server"
    key = create_key(data_dir, ORG, "notebook-user")
    with mirror_server(mirror) as mirror_url:
        env = {
            "MEDCLOUD_VISTA3D_BUNDLE": str(vista_bundle),
            "MEDCLOUD_AZURE_BLOB_ENDPOINT": azurite.endpoint.replace(AZURITE_ACCOUNT, "{account}"),
            "MEDCLOUD_BUNDLE_MIRROR": mirror_url,
            "MEDCLOUD_RESULTS_LAYOUT": "ngc",
            # The notebooks' bundle_url is on NGC: allowed as by default (the mirror answers it, nothing leaves).
            "MEDCLOUD_BUNDLE_ALLOWED_HOSTS": '["api.ngc.nvidia.com", "127.0.0.1", "localhost"]',
            **extra,
        }
        with medcloud_serve(data_dir, env=env) as server:
            yield Notebooks(server.url, key, azurite, data, zoo_folder, deepedit)


def login(nb: Notebooks) -> Session:
    """The notebooks' login cell."""
    api_url = f"{nb.host_url}/api/v1"
    response = requests.post(f"{api_url}/login", json={"ngc_api_key": nb.key})
    response.raise_for_status()
    assert "user_id" in response.json(), "user_id is not in response."
    assert "token" in response.json(), "token is not in response."
    return Session(
        f"{api_url}/orgs/{ORG}", {"Authorization": f"Bearer {response.json()['token']}"}, response.json()["user_id"]
    )


def wait_for_job(endpoint: str, headers: dict, timeout: float = JOB_TIMEOUT_S, target_status: str = "Done") -> dict:
    """The notebooks' `wait_for_job`, waiting on the condition instead of sleeping a fixed interval."""
    expected = ["Pending", "Running", "Done"]
    before = expected[: expected.index(target_status)]

    def reached() -> dict | None:
        response = requests.get(endpoint, headers=headers)
        response.raise_for_status()
        job = response.json()
        return job if job["status"].title() not in before else None

    job = wait_for(reached, timeout=timeout, what=f"job {endpoint.rsplit('/', 1)[-1]} to leave {before}")
    assert job["status"].title() == target_status, f"Job failed with status: {job['status']}: {job.get('result')}"
    return job


def base_experiments(s: Session) -> list[dict]:
    """Cell "List base experiments" (the same in every notebook)."""
    response = requests.get(f"{s.base_url}/experiments:base", headers=s.headers)
    assert response.status_code == 200, f"List base experiments failed, got {response.text}."
    return response.json()["experiments"]


def latest_vista(res: list[dict]) -> dict:
    vista3d_base_exps = [p for p in res if p["network_arch"] == "monai_vista3d"]
    assert len(vista3d_base_exps) > 0, "No base experiment found for VISTA 3D bundle"
    return sorted(vista3d_base_exps, key=lambda x: x["version"])[-1]


def deepedit_failure(res: list[dict], nb: Notebooks) -> str | None:
    """The notebooks' DeepEdit assertion, as a message (None when it holds)."""
    deepedit_base_exps = [p for p in res if p["network_arch"] == "monai_annotation" and not p["base_experiment"]]
    if deepedit_base_exps:
        return None
    why = f" ({nb.deepedit})" if nb.deepedit else ""
    return f"No base experiment found for MONAI Annotation (DeepEdit) bundle{why}"


def create(s: Session, what: str, data: dict) -> dict:
    response = requests.post(f"{s.base_url}/{what}", json=data, headers=s.headers)
    assert response.status_code == 201, f"Create {what} failed, got {response.text}."
    return response.json()


def delete(s: Session, what: str) -> dict:
    response = requests.delete(f"{s.base_url}/{what}", headers=s.headers)
    assert response.status_code == 200, f"Delete {what} failed, got {response.text}."
    return response.json()


def run_job(s: Session, experiment_id: str, data: dict) -> str:
    response = requests.post(f"{s.base_url}/experiments/{experiment_id}/jobs", json=data, headers=s.headers)
    assert response.status_code == 201, f"Run {data['action']} job failed, got {response.text}."
    job_id = response.json()
    assert isinstance(job_id, str)
    return job_id


def logs_of(s: Session, experiment_id: str, job_id: str) -> str:
    """The notebooks' log cell: logs are readable once a job is Running, Done or Error."""
    job = requests.get(f"{s.base_url}/experiments/{experiment_id}/jobs/{job_id}", headers=s.headers).json()
    assert job["status"].title() in ["Running", "Done", "Error"], job
    response = requests.get(f"{s.base_url}/experiments/{experiment_id}/jobs/{job_id}/logs", headers=s.headers)
    assert response.status_code == 200, f"Failed to get job logs, got {response.text}."
    return response.text


def blobs(nb: Notebooks, prefix: str) -> dict[str, bytes]:
    """Every blob of the workspace bucket under `prefix` (what the notebooks download with libcloud)."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(nb.azurite.connection_string).get_container_client(BUCKET)
    return {b.name: client.download_blob(b.name).readall() for b in client.list_blobs(name_starts_with=prefix)}


def multipart_files(response: requests.Response, folder: Path) -> dict[str, Path]:
    """The inference cells' loop: each part written to the file named in its Content-Disposition."""
    written = {}
    multipart_data = MultipartDecoder.from_response(response)
    for part in multipart_data.parts:
        filename = part.headers[b"Content-Disposition"].decode().split(";")[1].split("=")[1].strip('"')
        (folder / filename).write_bytes(part.content)
        written[filename] = folder / filename
    return written


def inside(mask: np.ndarray) -> list[int]:
    """A voxel index at the centre of the mask's object (a click an annotator would make)."""
    return [int(c.mean()) for c in mask.nonzero()]


# ------------------------------------------------------------------ "Dataset Creation and Experiment Selection"


def test_dataset_creation_and_experiment_selection(notebooks):
    nb, s = notebooks, login(notebooks)
    # cell 6, on object storage (the notebook's DICOMweb dataset is covered by test_guide_001)
    dataset = create(s, "datasets", nb.dataset_body("mydataset", "a demo dataset", "vista_train"))
    dataset_id = dataset["id"]
    assert dataset["type"] == "semantic_segmentation" and dataset["client_url"] == nb.data["vista_train"].url
    assert "client_secret" not in json.dumps(dataset) or nb.azurite.key not in json.dumps(dataset)
    # cell 8
    res = base_experiments(s)
    base_experiment = latest_vista(res)
    version, base_exp_vista = base_experiment["version"], base_experiment["id"]
    for exp in res:  # what the notebooks read of every base experiment
        for key in ("id", "name", "network_arch", "version", "ngc_path"):
            assert isinstance(exp.get(key), str) and exp[key], (key, exp)
        assert exp["base_experiment"] == [], exp
    assert base_experiment["ngc_path"].startswith("nvidia/monaihosting/vista3d:"), base_experiment["ngc_path"]
    assert len(base_experiment["model_params"]["labels"]) == 132
    assert base_experiment["model_params"]["labels"]["3"] == "spleen"
    deepedit = deepedit_failure(res, nb)  # checked at the end, so the rest of the flow is still exercised
    # cell 10: realtime_infer False, the workspace inline as `cloud_details`
    data = {
        "name": "monai_vista",
        "description": "Based on vista",
        "network_arch": "monai_vista3d",
        "type": "medical",
        "base_experiment": [base_exp_vista],
        "inference_dataset": dataset_id,
        "eval_dataset": dataset_id,
        "train_datasets": [dataset_id],
        "cloud_details": nb.cloud_details(),
        "realtime_infer": False,
    }
    res = create(s, "experiments", data)
    experiment_id = res["id"]
    assert res["network_arch"] == "monai_vista3d" and res["base_experiment"] == [base_exp_vista]
    assert res["train_datasets"] == [dataset_id] and res["eval_dataset"] == dataset_id
    assert res["realtime_infer"] is False and len(res["model_params"]["labels"]) == 132
    # cells 12 and 14 build payloads the notebook leaves to the reader: a subset of the classes, and a new one
    subset = {"1": "liver", "2": "kidney", "3": "spleen"}
    data12 = {
        "name": "my_vista_3_organ",
        "description": "based on vista",
        "network_arch": "monai_vista3d",
        "base_experiment": [base_exp_vista],
        "inference_dataset": dataset_id,
        "eval_dataset": dataset_id,
        "train_datasets": [dataset_id],
        "realtime_infer": True,
        "model_params": {"labels": subset},
    }
    organs = create(s, "experiments", data12)
    assert organs["model_params"]["labels"] == subset and organs["realtime_infer"] is True
    custom = {"1": "liver", "2": "kidney", "133": "myorgan"}
    mine = create(s, "experiments", {**data12, "realtime_infer": False, "model_params": {"labels": custom}})
    assert mine["model_params"]["labels"] == custom
    listed = requests.get(f"{s.base_url}/experiments", params={"user_only": "true"}, headers=s.headers).json()
    assert {e["id"] for e in listed["experiments"]} == {experiment_id, organs["id"], mine["id"]}
    # cells 16 and 18
    for exp_id in (experiment_id, organs["id"], mine["id"]):
        assert delete(s, f"experiments/{exp_id}")["id"] == exp_id
    delete(s, f"datasets/{dataset_id}")
    assert requests.get(f"{s.base_url}/datasets/{dataset_id}", headers=s.headers).status_code == 404
    assert version
    assert deepedit is None, deepedit


# ------------------------------------------------------------------ "Training a Custom MONAI Bundle"


def reference_segmentation(bundle: Path, image: Path, out: Path) -> np.ndarray:
    """The bundle's own configs/inference.json run on `image` in this process (no server): the expected labels."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(
        {
            "bundle_root": str(bundle),
            "output_dir": str(out),
            "dataset#data": [{"image": str(image)}],
            "dataloader#num_workers": 0,
        }
    )
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluator").run()
    (saved,) = list(out.rglob("*.nii.gz"))
    return np.asarray(nib.load(str(saved)).dataobj).astype(np.uint8)


def test_training_a_custom_monai_bundle(notebooks):
    if notebooks.zoo_folder is None:
        pytest.skip(NO_MODEL_ZOO)
    nb, s = notebooks, login(notebooks)
    # cell 8
    res = create(s, "datasets", nb.dataset_body("MONAI_CLOUD", "Remote storage object dataset", "spleen"))
    dataset_id = res["id"]
    # cell 10: the official NGC URL, answered by the mirror
    bundle_url = SPLEEN_CT_SEGMENTATION_URL
    data = {
        "name": "my_spleen_seg",
        "description": "from MONAI model zoo",
        "network_arch": "monai_custom",
        "train_datasets": [dataset_id],
        "eval_dataset": dataset_id,
        "bundle_url": bundle_url,
        "cloud_details": nb.cloud_details(),
    }
    res = create(s, "experiments", data)
    experiment_id, base_experiment_ids = res["id"], res["base_experiment"]
    assert res["model_params"]["labels"] == {"1": "spleen"}  # the zoo's channel_def
    # cell 12
    train_spec = {"epochs": 2}
    job_id = run_job(s, experiment_id, {"name": "my_spleen_seg", "action": "train", "specs": train_spec})
    # cell 15
    endpoint = f"{s.base_url}/experiments/{experiment_id}/jobs/{job_id}"
    response = requests.get(endpoint, headers=s.headers)
    assert response.status_code == 200, f"Failed to get job status, got {response.json()}."
    job = wait_for_job(endpoint, s.headers, timeout=JOB_TIMEOUT_S)
    assert job["result"]["max_epoch"] == 2, job["result"]
    assert job["result"]["epoch"] in (1, 2) and 0.0 <= job["result"]["key_metric"] <= 1.0, job["result"]
    # cell 17
    logs = logs_of(s, experiment_id, job_id)
    assert "val_mean_dice" in logs, logs[-2000:]
    # cell 18 (prose): the results are at {bucket}/shared/orgs/{org}/users/{user_id}/jobs/{job_id}
    folder = f"shared/orgs/{ORG}/users/{s.user_id}/jobs/{job_id}/"
    results = blobs(nb, folder)
    checkpoints = [name for name in results if name.endswith("models/model.pt")]
    assert checkpoints, sorted(results)
    import torch

    from medcloud.modelrun.train import load_state_dict

    reference = torch.load(nb.zoo_folder / "models" / "model.pt", map_location="cpu", weights_only=True)
    tmp = nb.zoo_folder.parent / "trained.pt"
    tmp.write_bytes(results[checkpoints[0]])
    trained = load_state_dict(tmp)
    assert set(trained) == set(reference)  # the zoo's UNet, trained: same layers, other weights
    assert any(not torch.equal(trained[k], reference[k]) for k in reference if reference[k].is_floating_point())
    # cells 21, 23, 25
    if requests.get(endpoint, headers=s.headers).json()["status"] != "Done":
        response = requests.post(f"{endpoint}:cancel", headers=s.headers)
        assert response.status_code == 200, f"Cancel job failed, got {response.json()}."
    delete(s, f"experiments/{experiment_id}")
    for base_experiment_id in base_experiment_ids:
        delete(s, f"experiments/{base_experiment_id}")
    delete(s, f"datasets/{dataset_id}")


# ------------------------------------------------------------------ "Training a MONAI Segmentation Bundle"


def test_training_a_monai_segmentation_bundle(notebooks):
    nb, s = notebooks, login(notebooks)
    # the dataset cells: train, validation and inference manifests
    train_dataset_id = create(s, "datasets", nb.dataset_body("MONAI_seg_train", "for training", "vista_train"))["id"]
    val_dataset_id = create(s, "datasets", nb.dataset_body("MONAI_seg_val", "for validation", "vista_val"))["id"]
    inference_dataset_id = create(s, "datasets", nb.dataset_body("MONAI_seg_infer", "for inference", "vista_infer"))[
        "id"
    ]
    # the base experiment cell
    res = base_experiments(s)
    base_experiment = latest_vista(res)
    version_vista, base_exp_vista = base_experiment["version"], base_experiment["id"]
    deepedit = deepedit_failure(res, nb)  # checked at the end, so the rest of the flow is still exercised
    # the experiment cell
    data = {
        "name": "my_vista",
        "description": "based on vista",
        "network_arch": "monai_vista3d",
        "type": "medical",
        "base_experiment": [base_exp_vista],
        "eval_dataset": val_dataset_id,
        "train_datasets": [train_dataset_id],
        "cloud_details": nb.cloud_details(),
        "inference_dataset": inference_dataset_id,
    }
    experiment_id = create(s, "experiments", data)["id"]
    # the train cell
    train_spec = {"train#trainer#max_epochs": 2, "val_interval": 1}
    train_job_id = run_job(s, experiment_id, {"name": "my_monai_segmentation", "action": "train", "specs": train_spec})
    endpoint = f"{s.base_url}/experiments/{experiment_id}/jobs/{train_job_id}"
    job_meta = wait_for_job(endpoint, s.headers, timeout=JOB_TIMEOUT_S)
    logs_of(s, experiment_id, train_job_id)
    epoch, key_metric = job_meta["result"]["epoch"], job_meta["result"]["key_metric"]
    # The contract: `train#trainer#max_epochs` is honoured, 2 epochs validated every epoch.
    assert job_meta["result"]["max_epoch"] == 2, job_meta["result"]
    assert epoch in (1, 2) and 0.0 <= key_metric <= 1.0, job_meta["result"]
    # the batch inference cell, on the trained model
    inference_spec = {"train_job_id": train_job_id}
    infer_job_id = run_job(s, experiment_id, {"name": "vista3d_infer", "action": "batchinfer", "specs": inference_spec})
    endpoint = f"{s.base_url}/experiments/{experiment_id}/jobs/{infer_job_id}"
    assert requests.get(endpoint, headers=s.headers).status_code == 200
    wait_for_job(endpoint, s.headers, timeout=JOB_TIMEOUT_S)
    # the download cell (libcloud in the notebook) and the nibabel cell
    folder = f"shared/orgs/{ORG}/users/{s.user_id}/jobs/{infer_job_id}/vista3d_segmentation_v{version_vista}/eval"
    files = {name: body for name, body in blobs(nb, folder).items() if name.endswith(".nii.gz")}
    infer = nb.data["vista_infer"]
    assert len(files) == len(infer.entries), sorted(files)
    for entry in infer.entries:
        stem = Path(entry["image"]["path"][0]).name.removesuffix(".nii.gz")
        (name,) = [n for n in files if Path(n).name.startswith(stem)]
        data = nib.Nifti1Image.from_bytes(gzip.decompress(files[name])).get_fdata()
        truth = infer.truth[entry["image"]["id"]]
        assert data.shape == truth.shape
        assert set(np.unique(data)) <= set(range(256)), np.unique(data)
        assert dice(data == SPLEEN, truth) > 0.5, (name, dice(data == SPLEEN, truth))
    # the clean-up cells
    response = requests.get(f"{s.base_url}/experiments/{experiment_id}/jobs", headers=s.headers)
    assert {j["id"] for j in response.json()["jobs"]} == {train_job_id, infer_job_id}
    for job in response.json()["jobs"]:
        endpoint = f"{s.base_url}/experiments/{experiment_id}/jobs/{job['id']}"
        if requests.get(endpoint, headers=s.headers).json()["status"] != "Done":
            response = requests.post(f"{endpoint}:cancel", headers=s.headers)
            assert response.status_code == 200, f"Cancel job failed, got {response.json()}."
    delete(s, f"experiments/{experiment_id}")
    for dataset_id in (train_dataset_id, val_dataset_id, inference_dataset_id):
        delete(s, f"datasets/{dataset_id}")
    assert deepedit is None, deepedit


# ------------------------------------------------------------------ "Perform Real-time Inference"


def test_perform_realtime_inference(notebooks, tmp_path, monkeypatch):
    nb, s = notebooks, login(notebooks)
    monkeypatch.chdir(tmp_path)
    infer = nb.data["vista_infer"]
    entry = infer.entries[0]
    truth = infer.truth[entry["image"]["id"]]
    image_bytes = (infer.root / entry["image"]["path"][0]).read_bytes()
    with http_server(files={"/images/scan.nii.gz": image_bytes}) as served:
        inference_image_url = f"{served.url}/images/scan.nii.gz"
        base_exp_vista = latest_vista(base_experiments(s))["id"]
        data = {
            "name": "my_vista",
            "description": "based on vista",
            "network_arch": "monai_vista3d",
            "base_experiment": [base_exp_vista],
            "realtime_infer": True,
        }
        experiment_id = create(s, "experiments", data)["id"]
        endpoint = f"{s.base_url}/experiments/{experiment_id}/jobs"
        data = {
            "action": "inference",
            "specs": {"image": inference_image_url, "bundle_params": {"label_prompt": list(range(1, 133))}},
        }
        response = requests.post(endpoint, json=data, headers=s.headers)
        assert response.status_code == 201, f"Run inference failed, got {response.text}."
        files = multipart_files(response, tmp_path)
        assert list(files) == ["scan_seg.nrrd"]
        readdata, header = nrrd.read(str(files["scan_seg.nrrd"]))
        assert readdata.shape == truth.shape and readdata.dtype == np.uint8
        assert dice(readdata == SPLEEN, truth) > 0.7
        # A point prompt (the annotation notebook's cell 23, with a click inside the object): one class, that object.
        data["specs"]["bundle_params"] = {"points": [inside(truth)], "point_labels": [1], "label_prompt": [SPLEEN]}
        response = requests.post(endpoint, json=data, headers=s.headers)
        assert response.status_code == 201, f"Run inference failed, got {response.text}."
        clicked, _ = nrrd.read(str(multipart_files(response, tmp_path)["scan_seg.nrrd"]))
        assert ((clicked == SPLEEN) & (truth > 0)).sum() > 0.5 * truth.sum()
        assert set(np.unique(clicked)) <= {0, SPLEEN, 255}
        assert served.hits.count("/images/scan.nii.gz") == 1  # downloaded once, then cached
    # the clean-up cells
    response = requests.patch(
        f"{s.base_url}/experiments/{experiment_id}", json={"realtime_infer": False}, headers=s.headers
    )
    assert response.status_code == 200, f"stop job failed, got {response.json()}."
    assert response.json()["realtime_infer"] is False
    delete(s, f"experiments/{experiment_id}")


def test_perform_realtime_inference_with_a_custom_monai_bundle(notebooks, tmp_path, monkeypatch):
    if notebooks.zoo_folder is None:
        pytest.skip(NO_MODEL_ZOO)
    nb, s = notebooks, login(notebooks)
    monkeypatch.chdir(tmp_path)
    dataset_id = create(s, "datasets", nb.dataset_body("MONAI_CLOUD", "Remote storage object dataset", "spleen"))["id"]
    # The notebook's endoscopic classification bundle becomes the model zoo's spleen segmentation (random weights,
    # same official URL scheme): a label volume whose every voxel the bundle's own inference run predicts.
    bundle_url = SPLEEN_CT_SEGMENTATION_URL
    data = {
        "name": "my_spleen_seg",
        "description": "from MONAI model zoo",
        "network_arch": "monai_custom",
        "train_datasets": [dataset_id],
        "eval_dataset": dataset_id,
        "realtime_infer": True,
        "bundle_url": bundle_url,
    }
    experiment_id = create(s, "experiments", data)["id"]
    entry = nb.data["spleen"].entries[1]
    inference_image_id = entry["image"]["id"]
    response = requests.post(
        f"{s.base_url}/datasets/{dataset_id}/jobs",
        json={"action": "cacheimage", "specs": {"image": inference_image_id}},
        headers=s.headers,
    )
    assert response.status_code == 201, f"cache image failed, got {response.json()}."
    response = requests.post(
        f"{s.base_url}/experiments/{experiment_id}/jobs",
        json={"action": "inference", "specs": {"image": inference_image_id}},
        headers=s.headers,
    )
    assert response.status_code == 201, f"Run inference failed, got {response.text}."
    files = multipart_files(response, tmp_path)
    stem = Path(entry["image"]["path"][0]).name.removesuffix(".nii.gz")
    assert list(files) == [f"{stem}_seg.nrrd"]
    body = files[f"{stem}_seg.nrrd"].read_bytes()
    header_end = body.index(b"\n\n")
    assert b"encoding: raw" in body[:header_end] and b"type: uint8" in body[:header_end]
    served, _ = nrrd.read(str(files[f"{stem}_seg.nrrd"]))
    image = nb.data["spleen"].root / entry["image"]["path"][0]
    expected = reference_segmentation(nb.zoo_folder, image, tmp_path / "reference")
    assert served.shape == expected.shape == nb.data["spleen"].truth[inference_image_id].shape
    assert np.array_equal(served, expected), f"{(served != expected).sum()} voxels differ"
    # the clean-up cells
    response = requests.patch(
        f"{s.base_url}/experiments/{experiment_id}", json={"realtime_infer": False}, headers=s.headers
    )
    assert response.status_code == 200, f"stop job failed, got {response.json()}."
    delete(s, f"experiments/{experiment_id}")
    delete(s, f"datasets/{dataset_id}")


# ------------------------------------------------------------------ "Annotation and Continual Learning Overview"


def label_nrrd(volume: np.ndarray, affine: np.ndarray) -> bytes:
    """A label as the viewer saves it: uint8 NRRD on the image's grid."""
    header = {
        "encoding": "raw",
        "space": "right-anterior-superior",
        "space directions": affine[:3, :3].T,
        "space origin": affine[:3, 3],
    }
    out = io.BytesIO()
    nrrd.write(out, volume.astype(np.uint8), header, index_order="F")
    return out.getvalue()


def test_annotation_and_continual_learning(notebooks):
    nb, s = notebooks, login(notebooks)
    annotate = nb.data["annotate"]
    # cell 6, on object storage: one labeled image (training needs one), two to annotate
    dataset_id = create(s, "datasets", nb.dataset_body("mydataset", "a demo dataset", "annotate"))["id"]
    # cells 8 and 12
    base_exp_vista = latest_vista(base_experiments(s))["id"]
    labels = {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas", "5": "right kidney"}
    data = {
        "name": "my_vista",
        "description": "based on vista",
        "network_arch": "monai_vista3d",
        "base_experiment": [base_exp_vista],
        "inference_dataset": dataset_id,
        "eval_dataset": dataset_id,
        "train_datasets": [dataset_id],
        "realtime_infer": True,
        "cloud_details": nb.cloud_details(),
        "model_params": {"labels": labels},
    }
    experiment_id = create(s, "experiments", data)["id"]
    jobs = f"{s.base_url}/experiments/{experiment_id}/jobs"
    # cell 14
    train_spec = {"epochs": 2, "val_interval": 1}
    specs = {"round_size": 1, "stop_criteria": {"max_rounds": 2, "key_metric": 0.9}, "train_spec": train_spec}
    cl_job_id = run_job(s, experiment_id, {"action": "annotation", "specs": specs})
    # cell 16
    wait_for_job(f"{jobs}/{cl_job_id}", s.headers, timeout=60, target_status="Running")
    # cell 19: nextimage offers an unlabeled image; all 132 classes on it
    response = requests.post(
        f"{s.base_url}/datasets/{dataset_id}/jobs", json={"action": "nextimage"}, headers=s.headers
    )
    assert response.status_code == 201, f"Recommend image failed, got {response.json()}."
    inference_image_id = response.json()["image"]
    unlabeled = {e["image"]["id"]: e for e in annotate.entries if "label" not in e}
    assert inference_image_id in unlabeled and response.json()["meta"] == {"labels": []}
    truth = annotate.truth[inference_image_id]

    def infer(bundle_params: dict) -> np.ndarray:
        data = {"action": "inference", "specs": {"image": inference_image_id, "bundle_params": bundle_params}}
        response = requests.post(jobs, json=data, headers=s.headers)
        assert response.status_code == 201, f"Run inference failed, got {response.text}."
        parts = MultipartDecoder.from_response(response).parts
        assert len(parts) == 1
        volume, _ = nrrd_from_bytes(parts[0].content)
        assert volume.shape == truth.shape
        return volume

    everything = infer({"label_prompt": list(range(1, 133))})
    assert dice(everything == SPLEEN, truth) > 0.7
    # cell 21: the experiment's classes
    selected = infer({"label_prompt": [1, 2, 3, 4, 5]})
    assert dice(selected == SPLEEN, truth) > 0.7
    # cell 23, as written: two points labeled 2 (VISTA's special-class positive) for class 3
    pointed = infer({"points": [[20, 20, 20], [20, 40, 60]], "point_labels": [2, 2], "label_prompt": [3]})
    assert set(np.unique(pointed)) <= {0, SPLEEN, 255}
    # cells 24-28 happen in a viewer: the annotator saves a label (here as medcloud's viewer does) ...
    image_path = annotate.root / unlabeled[inference_image_id]["image"]["path"][0]
    affine = nib.load(str(image_path)).affine
    response = requests.put(
        f"{s.base_url}/datasets/{dataset_id}/images/{inference_image_id}/label",
        params={"experiment_id": experiment_id},
        data=label_nrrd(truth * SPLEEN, affine),
        headers={**s.headers, "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    label_id = response.json()["label"]
    assert response.json()["voxels"] == {str(SPLEEN): int(truth.sum())}
    # ... and presses "Notify Server": cell 28's snippet
    data = {
        "action": "notify",
        "specs": {"added": {"image": inference_image_id, "label": label_id}, "updated": [], "removed": []},
    }
    response = requests.post(f"{s.base_url}/datasets/{dataset_id}/jobs", json=data, headers=s.headers)
    assert response.status_code == 201, response.text

    # One image annotated = one round (round_size 1): a train job of the annotation job, on the labeled images.
    def round_ended() -> dict | None:
        listed = requests.get(jobs, headers=s.headers).json()["jobs"]
        train = [j for j in listed if j["action"] == "train" and j["parent_id"] == cl_job_id]
        return train[0] if train and train[0]["status"] in ("Done", "Error") else None

    round_job = wait_for(round_ended, timeout=JOB_TIMEOUT_S, what="the first continual-learning round")
    assert round_job["status"] == "Done", round_job["result"]
    offered = requests.post(f"{s.base_url}/datasets/{dataset_id}/jobs", json={"action": "nextimage"}, headers=s.headers)
    assert offered.status_code == 201 and offered.json()["image"] != inference_image_id  # now labeled
    # cell 30
    assert logs_of(s, experiment_id, cl_job_id)
    # cell 32
    endpoint = f"{jobs}/{cl_job_id}"
    if requests.get(endpoint, headers=s.headers).json()["status"] != "Done":
        response = requests.post(f"{endpoint}:cancel", headers=s.headers)
        assert response.status_code == 200, f"cancel job failed, got {response.json()}."
    # cell 34
    response = requests.patch(
        f"{s.base_url}/experiments/{experiment_id}", json={"realtime_infer": False}, headers=s.headers
    )
    assert response.status_code == 200, f"stop job failed, got {response.json()}."
    # cell 36
    response = requests.get(jobs, headers=s.headers)
    assert response.status_code == 200, f"List all jobs failed, got {response.json()}."
    train_job_id = None
    for job_meta in response.json()["jobs"]:
        if job_meta["id"] != cl_job_id:
            train_job_id = job_meta["id"]
            if job_meta["status"] == "Done":
                assert isinstance(job_meta["result"]["key_metric"], float)
    assert train_job_id is not None
    # cell 37
    endpoint = f"{jobs}/{train_job_id}"
    if requests.get(endpoint, headers=s.headers).json()["status"] != "Done":
        response = requests.post(f"{endpoint}:cancel", headers=s.headers)
        assert response.status_code == 200, f"cancel train job failed, got {response.json()}."
    # cell 43: clean up once the cancelled annotation job has stopped
    wait_for(
        lambda: requests.get(f"{jobs}/{cl_job_id}", headers=s.headers).json()["status"] in ("Done", "Canceled"),
        timeout=60,
        what="the annotation job to stop",
    )
    delete(s, f"experiments/{experiment_id}")
    delete(s, f"datasets/{dataset_id}")


def nrrd_from_bytes(data: bytes) -> tuple[np.ndarray, dict]:
    """pynrrd's reader on bytes (the notebook writes the part to a file first)."""
    stream = io.BytesIO(data)
    header = nrrd.read_header(stream)
    return nrrd.read_data(header, stream, index_order="F"), header
