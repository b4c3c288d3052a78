"""DeepEdit (`monai_annotation`) over the API: the base experiment, automatic and click segmentation, bad
clicks, and a train job on an object-storage dataset that improves a weak model (read from batch inference).

The model is the small demo DeepEdit (`families/deepedit/demo.py`): bright blobs are "spleen", darker ones
are ambiguous; a "spleen" click adds an ambiguous blob, a "background" click removes a bright one.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from builders import SHAPE, SPLEEN, annotate_round, dataset_for, held_out_dice, wait_status
from helpers import dice, multipart_parts, nrrd_voxels

from medcloud.families.deepedit.demo import DeepEditVolume, deepedit_ct_volume, make_deepedit_bundle


def deepedit_base(api) -> dict:
    bases = api.get("experiments:base").json()["experiments"]
    # the notebooks' own filter ("Dataset Creation and Experiment Selection", "Training a MONAI Segmentation Bundle")
    found = [p for p in bases if p["network_arch"] == "monai_annotation" and not p["base_experiment"]]
    assert len(found) == 1, bases
    return found[0]


def volume_dataset(api, folder: Path, volumes: dict[str, DeepEditVolume], *, labeled: bool = True) -> str:
    """A local object-storage dataset (manifest.json) of the volumes, labeled with their automatic-mode truth."""
    data = []
    for name, volume in volumes.items():
        volume.save(folder / "images" / f"{name}.nii.gz", folder / "labels" / f"{name}.nii.gz" if labeled else None)
        item = {"image": {"path": [f"images/{name}.nii.gz"], "id": name}}
        if labeled:
            item["label"] = {"path": [f"labels/{name}.nii.gz"], "id": f"{name}-label"}
        data.append(item)
    (folder / "manifest.json").write_text(json.dumps({"data": data}))
    resp = api.post("datasets", json={"name": folder.name, "type": "semantic_segmentation", "client_url": str(folder)})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def deepedit_experiment(api, dataset_id: str, *, realtime: bool = True, **extra) -> dict:
    body = {
        "name": "de",
        "network_arch": "monai_annotation",
        "base_experiment": [deepedit_base(api)["id"]],
        "train_datasets": [dataset_id],
        "eval_dataset": dataset_id,
        "inference_dataset": dataset_id,
        "realtime_infer": realtime,
        **extra,
    }
    resp = api.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture
def deepedit_api(tmp_path, deepedit_bundle):
    from conftest import make_api

    with make_api(tmp_path / "data", deepedit_bundle=str(deepedit_bundle)) as running:
        yield running


def test_deepedit_is_a_base_experiment_with_the_notebook_fields(api):
    base = deepedit_base(api)
    assert base["ngc_path"] == f"nvidia/monaihosting/spleen_deepedit_annotation:{base['version']}"
    assert base["name"] and base["version"] and base["base_experiment"] == []
    assert base["model_params"]["labels"] == SPLEEN
    assert api.get(f"experiments/{base['id']}").json()["network_arch"] == "monai_annotation"
    vista = next(b for b in api.get("experiments:base").json()["experiments"] if b["network_arch"] == "monai_vista3d")
    assert vista["ngc_path"] == f"nvidia/monaihosting/vista3d:{vista['version']}" and vista["base_experiment"] == []


def test_monai_annotation_needs_a_base_or_a_bundle_and_weights(api, tmp_path):
    dataset_id = volume_dataset(api, tmp_path / "ds", {"a": deepedit_ct_volume(1)})
    body = {"name": "x", "network_arch": "monai_annotation", "train_datasets": [dataset_id], "realtime_infer": True}
    resp = api.post("experiments", json=body)
    assert resp.status_code == 400 and "base_experiment" in resp.json()["error_desc"]
    resp = api.post("experiments", json={**body, "base_experiment": [deepedit_base(api)["id"]]})
    assert resp.status_code == 400 and "MEDCLOUD_DEEPEDIT_BUNDLE" in resp.json()["error_desc"]
    assert api.get("experiments", params={"user_only": "true"}).json()["experiments"] == []


def test_automatic_and_click_segmentation(deepedit_api, tmp_path):
    api = deepedit_api
    volume = deepedit_ct_volume(11, organs=2, ambiguous=1)  # seeds below the demo's training seeds: held out
    dataset_id = volume_dataset(api, tmp_path / "held", {"held": volume}, labeled=False)
    exp = deepedit_experiment(api, dataset_id)
    assert exp["model_params"]["labels"] == SPLEEN

    def infer(params: dict) -> np.ndarray:
        resp = api.post(
            f"experiments/{exp['id']}/jobs",
            json={"action": "inference", "specs": {"image": "held", "bundle_params": params}},
        )
        assert resp.status_code == 201, resp.text
        parts = multipart_parts(resp)
        assert list(parts) == ["held_seg.nrrd"]
        return nrrd_voxels(parts["held_seg.nrrd"], volume.image.shape)

    auto = infer({})
    assert set(np.unique(auto)) <= {0, 1}
    assert dice(auto == 1, volume.label == 1) >= 0.7
    ambiguous, organ = volume.ambiguous[0], volume.organs[0]
    blob = volume.components == ambiguous
    assert (auto[blob] == 1).mean() < 0.3  # automatic mode leaves the darker blob out

    grown = infer({"spleen": [volume.inside(ambiguous)], "background": []})
    assert (grown[blob] == 1).mean() > 0.6  # the click inside it adds it
    assert dice(grown == 1, np.isin(volume.components, [*volume.organs, ambiguous])) > 0.6

    organ_mask = volume.components == organ
    removed = infer({"background": [volume.inside(organ)]})
    assert (auto[organ_mask] == 1).mean() > 0.6 and (removed[organ_mask] == 1).mean() < 0.3
    other = volume.components == volume.organs[1]
    assert (removed[other] == 1).mean() > 0.6  # the other organ is kept

    for bad, words in (
        ({"liver": [[1, 2, 3]]}, "liver"),
        ({"spleen": [[1, 2]]}, "3"),
        ({"spleen": [[1.5, 2, 3]]}, "integer"),
        ({"spleen": [[1, 2, 999]]}, "outside"),
        ({"spleen": "$__import__('os').system('id')"}, "spleen"),
    ):
        resp = api.post(
            f"experiments/{exp['id']}/jobs",
            json={"action": "inference", "specs": {"image": "held", "bundle_params": bad}},
        )
        assert resp.status_code == 400, (bad, resp.text)
        assert words in resp.json()["error_desc"], (bad, resp.json())


def test_a_train_job_improves_a_weak_model(api, tmp_path):
    """Official train.json (DeepEdit's click simulation) from weak weights; batch inference with the
    trained weights beats the weak ones on held-out volumes (NIfTI outputs, read from the download)."""
    from conftest import make_api

    weak = make_deepedit_bundle(tmp_path / "weak", train=True, steps=20, volumes=4)
    with make_api(tmp_path / "data2", deepedit_bundle=str(weak)) as api2:
        train_ds = volume_dataset(api2, tmp_path / "train", {f"t{i}": deepedit_ct_volume(100 + i) for i in range(6)})
        held = {f"h{i}": deepedit_ct_volume(200 + i) for i in range(2)}
        held_ds = volume_dataset(api2, tmp_path / "heldout", held)
        exp = deepedit_experiment(api2, train_ds, realtime=False, eval_dataset=held_ds, inference_dataset=held_ds)

        def batch_dice(specs: dict) -> float:
            resp = api2.post(f"experiments/{exp['id']}/jobs", json={"action": "batchinfer", "specs": specs})
            assert resp.status_code == 201, resp.text
            done = wait_status(api2, exp, resp.json(), {"Done", "Error"}, timeout=300)
            assert done["status"] == "Done", done["result"]
            tar = api2.get(f"experiments/{exp['id']}/jobs/{resp.json()}:download")
            scores = []
            with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
                outputs = [m for m in archive.getmembers() if m.name.endswith("_seg.nii.gz")]
                assert len(outputs) == len(held), archive.getnames()
                for member in outputs:
                    name = Path(member.name).name.removesuffix("_seg.nii.gz")
                    image = nib.Nifti1Image.from_bytes(gzip.decompress(archive.extractfile(member).read()))
                    scores.append(dice(np.asarray(image.dataobj) == 1, held[name].label == 1))
            return float(np.mean(scores))

        before = batch_dice({})
        resp = api2.post(
            f"experiments/{exp['id']}/jobs",
            json={
                "action": "train",
                "specs": {"train#trainer#max_epochs": 8, "val_interval": 2, "optimizer#lr": 0.005},
            },
        )
        assert resp.status_code == 201, resp.text
        train = wait_status(api2, exp, resp.json(), {"Done", "Error"}, timeout=600)
        assert train["status"] == "Done", train["result"]
        assert train["result"]["max_epoch"] == 8 and train["result"]["key_metric"] > 0
        after = batch_dice({"train_job_id": train["id"]})
        print(f"DeepEdit held-out Dice before {before:.3f}, after the train job {after:.3f}")
        assert after > before + 0.05 and after > 0.7, (before, after)  # measured: 0.67 → 0.82


def test_continual_learning_on_dicomweb(tmp_path, empty_orthanc):
    """An annotation job on a DICOMweb dataset: a SEG stored in Orthanc + notify start a round on the
    official train.json; the round ends Done and the real-time host serves the fine-tuned weights."""
    from conftest import make_api
    from dicom_data import store_ct, store_seg

    weak = make_deepedit_bundle(tmp_path / "weak", train=True, steps=20, volumes=4)
    with make_api(tmp_path / "data", deepedit_bundle=str(weak)) as api:
        train_series = store_ct(empty_orthanc, seed=41, shape=SHAPE, patient_id="TRAIN")
        eval_series = store_ct(empty_orthanc, seed=51, shape=SHAPE, patient_id="EVAL")
        held = store_ct(empty_orthanc, seed=61, shape=SHAPE, patient_id="HELD")
        store_seg(empty_orthanc, eval_series, SPLEEN)
        train_ds, eval_ds, held_ds = (dataset_for(api, empty_orthanc, p) for p in ("TRAIN", "EVAL", "HELD"))
        exp = deepedit_experiment(api, train_ds, eval_dataset=eval_ds, inference_dataset=held_ds)
        dice_before = held_out_dice(api, exp, held_ds, held)
        resp = api.post(
            f"experiments/{exp['id']}/jobs",
            json={
                "action": "annotation",
                "specs": {
                    "round_size": 1,
                    "stop_criteria": {"max_rounds": 1},
                    "train_spec": {"train#trainer#max_epochs": 10, "val_interval": 1, "optimizer#lr": 0.005},
                },
            },
        )
        assert resp.status_code == 201, resp.text
        cl_job = resp.json()
        assert wait_status(api, exp, cl_job, {"Running"}, timeout=10)["status"] == "Running"
        round_ = annotate_round(api, empty_orthanc, exp, cl_job, train_ds, train_series, labels=SPLEEN)
        assert round_["status"] == "Done", round_["result"]
        assert round_["result"]["key_metric"] > round_["result"]["start_key_metric"], round_["result"]
        done = wait_status(api, exp, cl_job, {"Done", "Error"}, timeout=60)
        assert done["status"] == "Done" and done["result"]["round"] == 1
        dice_after = held_out_dice(api, exp, held_ds, held)
        print(f"DeepEdit continual learning on DICOMweb: held-out Dice {dice_before:.3f} → {dice_after:.3f}")
        assert dice_after > dice_before + 0.05, (dice_before, dice_after)
