"""Continual learning on a custom bundle: SEGs stored in Orthanc + notify drive real training rounds.

Starts from an untrained segmentation bundle; after two annotated rounds the validation metric is
higher than the starting model's, the real-time host serves the better weights (Dice on a held-out
series rises), and the job ends Done by `max_rounds`; a second run ends Done by `key_metric`.
"""

from __future__ import annotations

from builders import SHAPE, SPLEEN, annotate_round, dataset_for, held_out_dice, job, notify, wait_status
from dicom_data import store_ct, store_seg
from helpers import wait_for


def test_two_rounds_improve_the_model_and_the_host_serves_it(api, empty_orthanc, weak_bundle):
    train_series = [store_ct(empty_orthanc, seed=40 + i, shape=SHAPE, patient_id="TRAIN") for i in range(2)]
    eval_series = store_ct(empty_orthanc, seed=50, shape=SHAPE, patient_id="EVAL")
    held = store_ct(empty_orthanc, seed=60, shape=SHAPE, patient_id="HELD")
    store_seg(empty_orthanc, eval_series, SPLEEN)
    train_ds, eval_ds, held_ds = (dataset_for(api, empty_orthanc, p) for p in ("TRAIN", "EVAL", "HELD"))
    exp = api.post(
        "experiments",
        json={
            "name": "cl",
            "network_arch": "monai_segmentation",
            "train_datasets": [train_ds],
            "eval_dataset": eval_ds,
            "realtime_infer": True,
            "bundle_url": str(weak_bundle),
            "model_params": {"labels": SPLEEN},
        },
    ).json()
    dice_before = held_out_dice(api, exp, held_ds, held)
    resp = api.post(
        f"experiments/{exp['id']}/jobs",
        json={
            "action": "annotation",
            "specs": {
                "round_size": 1,
                "stop_criteria": {"max_rounds": 2},
                "train_spec": {"epochs": 12, "val_interval": 1, "learning_rate": 0.01},
            },
        },
    )
    assert resp.status_code == 201, resp.text
    cl_job = resp.json()
    assert wait_status(api, exp, cl_job, {"Running"}, timeout=10)["status"] == "Running"
    again = api.post(f"experiments/{exp['id']}/jobs", json={"action": "annotation", "specs": {}})
    assert again.status_code == 400  # one annotation job per experiment
    first = annotate_round(api, empty_orthanc, exp, cl_job, train_ds, train_series[0])
    second = annotate_round(api, empty_orthanc, exp, cl_job, train_ds, train_series[1])
    assert first["status"] == second["status"] == "Done", (first["result"], second["result"])
    start_metric = first["result"]["start_key_metric"]
    assert second["result"]["key_metric"] > start_metric + 0.2, (start_metric, second["result"])
    done = wait_status(api, exp, cl_job, {"Done", "Error"}, timeout=30)
    assert done["status"] == "Done" and "max_rounds" in done["result"]["detailed_status"]["message"]
    assert done["result"]["round"] == 2
    dice_after = held_out_dice(api, exp, held_ds, held)
    assert dice_after > dice_before + 0.2, (dice_before, dice_after)
    logs = api.get(f"experiments/{exp['id']}/jobs/{cl_job}/logs")
    assert logs.status_code == 200 and "Round 2 finished" in logs.text

    # A second run stops as soon as the metric target is met.
    resp = api.post(
        f"experiments/{exp['id']}/jobs",
        json={
            "action": "annotation",
            "specs": {
                "round_size": 1,
                "stop_criteria": {"max_rounds": 5, "key_metric": 0.05},
                "train_spec": {"epochs": 2, "val_interval": 1},
            },
        },
    )
    second_run = resp.json()
    wait_status(api, exp, second_run, {"Running"}, timeout=10)
    third = annotate_round(
        api, empty_orthanc, exp, second_run, train_ds, store_ct(empty_orthanc, seed=70, shape=SHAPE, patient_id="TRAIN")
    )
    assert third["status"] == "Done"
    ended = wait_status(api, exp, second_run, {"Done", "Error"}, timeout=30)
    assert ended["status"] == "Done" and "key_metric" in ended["result"]["detailed_status"]["message"]
    assert job(api, exp, second_run)["result"]["round"] == 1


def test_unknown_stop_criteria_end_the_job_in_error(api, empty_orthanc, weak_bundle):
    train_ds = dataset_for(api, empty_orthanc, "TRAIN")
    exp = api.post(
        "experiments",
        json={
            "name": "cl",
            "network_arch": "monai_segmentation",
            "train_datasets": [train_ds],
            "eval_dataset": train_ds,
            "bundle_url": str(weak_bundle),
        },
    ).json()
    cl_job = api.post(
        f"experiments/{exp['id']}/jobs", json={"action": "annotation", "specs": {"stop_criteria": {"max_epochs": 3}}}
    ).json()
    failed = wait_status(api, exp, cl_job, {"Error"}, timeout=10)
    assert "Unknown stop_criteria key(s): max_epochs" in failed["result"]["detailed_status"]["message"]


def test_cancel_stops_the_controller_and_its_train_job(api, empty_orthanc, weak_bundle):
    series = store_ct(empty_orthanc, seed=80, shape=SHAPE, patient_id="TRAIN")
    train_ds = dataset_for(api, empty_orthanc, "TRAIN")
    exp = api.post(
        "experiments",
        json={
            "name": "cl",
            "network_arch": "monai_segmentation",
            "train_datasets": [train_ds],
            "eval_dataset": train_ds,
            "model_params": {"labels": SPLEEN},
            "bundle_url": str(weak_bundle),
        },
    ).json()
    cl_job = api.post(
        f"experiments/{exp['id']}/jobs",
        json={"action": "annotation", "specs": {"round_size": 1, "train_spec": {"epochs": 500}}},
    ).json()
    wait_status(api, exp, cl_job, {"Running"}, timeout=10)
    notify(api, train_ds, series, store_seg(empty_orthanc, series, SPLEEN))
    train = wait_for(
        lambda: [
            j
            for j in api.get(f"experiments/{exp['id']}/jobs").json()["jobs"]
            if j["action"] == "train" and j["status"] == "Running"
        ],
        timeout=60,
    )[0]
    resp = api.post(f"experiments/{exp['id']}/jobs/{cl_job}:cancel")
    assert resp.status_code == 200 and resp.json()["message"] == f"Running job {cl_job} cancelled"
    assert wait_status(api, exp, train["id"], {"Canceled"}, timeout=30)["status"] == "Canceled"
    assert job(api, exp, cl_job)["status"] == "Canceled"
