"""MLflow tracking of train jobs against a real MLflow server, and batch inference jobs."""

from __future__ import annotations

import io
import tarfile

from builders import seg_experiment, start, wait_status


def test_train_job_logs_params_and_per_epoch_metrics_to_mlflow(api, local_dataset, demo_zips, mlflow_url):
    from mlflow.tracking import MlflowClient

    exp = seg_experiment(api, local_dataset, demo_zips)
    job_id = start(
        api,
        exp,
        {
            "epochs": 2,
            "val_interval": 1,
            "tracking": "mlflow",
            "tracking_uri": mlflow_url,
            "experiment_name": "medcloud-test",
            "save_execute_config": False,
        },
    )
    done = wait_status(api, exp, job_id, {"Done", "Error"})
    assert done["status"] == "Done", done["result"]
    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name("medcloud-test")
    runs = client.search_runs([experiment.experiment_id])
    run = next(r for r in runs if r.info.run_name == job_id)
    assert run.data.params  # the bundle's parameters were logged
    history = client.get_metric_history(run.info.run_id, next(k for k in run.data.metrics if "dice" in k.lower()))
    assert len(history) == 2  # one validation metric per epoch


def test_batchinfer_writes_a_prediction_per_image(api, local_dataset, demo_zips):
    exp = seg_experiment(api, local_dataset, demo_zips)
    api.patch(f"experiments/{exp['id']}", json={"inference_dataset": exp["train_datasets"][0]})
    manifest_cts = [p.name for p in (local_dataset / "imagesTr").iterdir()]
    job_id = start(api, exp, {}, action="batchinfer")
    done = wait_status(api, exp, job_id, {"Done", "Error"})
    assert done["status"] == "Done", done["result"]
    tar = api.get(f"experiments/{exp['id']}/jobs/{job_id}:download")
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        outputs = [n for n in archive.getnames() if n.endswith("_seg.nrrd")]
    assert len(outputs) == len(manifest_cts)
    assert done["result"]["images"] == len(manifest_cts)
    pngs = [p for p in (local_dataset / "images2d").iterdir()]
    assert len(done["result"]["failed"]) == len(pngs)  # 2D frames can't go through a 3D bundle: listed, not fatal
