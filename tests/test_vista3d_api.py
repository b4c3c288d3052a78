"""VISTA-3D experiments over the API on a real Orthanc: configuration, prompts, rules, continual learning."""

from __future__ import annotations

import pytest
from builders import annotate_round, dataset_for, wait_status
from dicom_data import store_ct, store_seg
from helpers import dice, multipart_parts, nrrd_voxels

GUIDE_LABELS = {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas", "5": "right kidney"}


@pytest.fixture(scope="session")
def weak_vista_bundle(tmp_path_factory):
    from medcloud.families.vista3d.demo import make_vista3d_bundle

    return make_vista3d_bundle(tmp_path_factory.mktemp("weakvista"), train=False, seed=7)


@pytest.fixture
def vista_api(tmp_path, vista_bundle):
    from conftest import make_api

    with make_api(tmp_path / "vista", vista3d_bundle=str(vista_bundle)) as running:
        yield running


def base_id(api):
    return next(
        e["id"] for e in api.get("experiments:base").json()["experiments"] if e["network_arch"] == "monai_vista3d"
    )


def vista_experiment(api, dataset_id, **extra):
    body = {
        "name": "v",
        "network_arch": "monai_vista3d",
        "base_experiment": [base_id(api)],
        "inference_dataset": dataset_id,
        "eval_dataset": dataset_id,
        "train_datasets": [dataset_id],
        "realtime_infer": True,
        "model_params": {"labels": GUIDE_LABELS},
        **extra,
    }
    resp = api.post("experiments", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_realtime_vista_without_weights_says_how_to_configure(api, empty_orthanc):
    dataset_id = dataset_for(api, empty_orthanc, "ANY")
    resp = api.post(
        "experiments",
        json={
            "name": "v",
            "network_arch": "monai_vista3d",
            "base_experiment": [base_id(api)],
            "train_datasets": [dataset_id],
            "realtime_infer": True,
        },
    )
    assert resp.status_code == 400 and "MEDCLOUD_VISTA3D_BUNDLE" in resp.json()["error_desc"]
    assert api.get("experiments", params={"user_only": "true"}).json()["experiments"] == []


def test_class_and_point_prompts_on_a_dicom_series(vista_api, empty_orthanc):
    api = vista_api
    series = store_ct(empty_orthanc, seed=400, shape=(64, 64, 64), patient_id="VISTA")
    dataset_id = dataset_for(api, empty_orthanc, "VISTA")
    exp = vista_experiment(api, dataset_id)
    jobs = f"experiments/{exp['id']}/jobs"

    def infer(params):
        resp = api.post(jobs, json={"action": "inference", "specs": {"image": series.uid, "bundle_params": params}})
        assert resp.status_code == 201, resp.text
        parts = multipart_parts(resp)
        assert list(parts) == [f"{series.uid}_seg.nrrd"]
        return nrrd_voxels(parts[f"{series.uid}_seg.nrrd"], series.label.shape)

    assert dice(infer({"label_prompt": [3]}) == 3, series.label) > 0.7
    everything = infer({"label_prompt": list(range(1, 133))})
    assert everything.shape == series.label.shape
    inside = [int(c.mean()) for c in series.label.nonzero()]
    clicked = infer({"points": [inside], "point_labels": [1], "label_prompt": [3]})
    assert ((clicked == 3) & (series.label > 0)).sum() > 0.5 * (series.label > 0).sum()
    cases = [
        ({"label_prompt": [1, 3], "points": [inside], "point_labels": [1]}, "one class"),
        ({"points": [inside]}, "point_labels"),
        ({"points": [inside, inside], "point_labels": [1]}, "same length"),
        ({"points": [[500, 0, 0]], "point_labels": [1], "label_prompt": [3]}, "outside the image"),
        ({"label_prompt": [999]}, "999"),
    ]
    for params, fragment in cases:
        resp = api.post(jobs, json={"action": "inference", "specs": {"image": series.uid, "bundle_params": params}})
        assert resp.status_code == 400, params
        assert fragment in resp.json()["error_desc"], (params, resp.json())


def test_continual_learning_improves_a_weak_vista3d(tmp_path, empty_orthanc, weak_vista_bundle):
    from conftest import make_api

    with make_api(tmp_path / "weak", vista3d_bundle=str(weak_vista_bundle)) as api:
        train = [store_ct(empty_orthanc, seed=410 + i, shape=(64, 64, 64), patient_id="TRAIN") for i in range(2)]
        evaluation = store_ct(empty_orthanc, seed=420, shape=(64, 64, 64), patient_id="EVAL")
        held = store_ct(empty_orthanc, seed=430, shape=(64, 64, 64), patient_id="HELD")
        store_seg(empty_orthanc, evaluation, {"3": "spleen"})
        train_ds, eval_ds, held_ds = (dataset_for(api, empty_orthanc, p) for p in ("TRAIN", "EVAL", "HELD"))
        exp = vista_experiment(api, held_ds, train_datasets=[train_ds], eval_dataset=eval_ds)

        def held_dice():
            resp = api.post(
                f"experiments/{exp['id']}/jobs",
                json={"action": "inference", "specs": {"image": held.uid, "bundle_params": {"label_prompt": [3]}}},
            )
            return dice(nrrd_voxels(next(iter(multipart_parts(resp).values())), held.label.shape) == 3, held.label)

        before = held_dice()
        cl_job = api.post(
            f"experiments/{exp['id']}/jobs",
            json={
                "action": "annotation",
                "specs": {
                    "round_size": 1,
                    "stop_criteria": {"max_rounds": 2},
                    "train_spec": {"epochs": 3, "val_interval": 1, "learning_rate": 0.005, "steps_per_epoch": 25},
                },
            },
        ).json()
        wait_status(api, exp, cl_job, {"Running"}, timeout=10)
        first = annotate_round(api, empty_orthanc, exp, cl_job, train_ds, train[0], labels={"3": "spleen"})
        second = annotate_round(api, empty_orthanc, exp, cl_job, train_ds, train[1], labels={"3": "spleen"})
        assert first["status"] == second["status"] == "Done", (first["result"], second["result"])
        assert second["result"]["key_metric"] > first["result"]["start_key_metric"] + 0.2
        assert wait_status(api, exp, cl_job, {"Done", "Error"}, timeout=30)["status"] == "Done"
        assert held_dice() > before + 0.2
