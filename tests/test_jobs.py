"""Train jobs on a custom bundle: real worker processes, results, logs, download, cancel, crashes, queueing."""

from __future__ import annotations

import io
import os
import signal
import tarfile
from pathlib import Path

import pytest
from builders import job, seg_experiment, start, wait_status
from helpers import wait_for
from services import s3_client

UNKNOWN = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def test_train_job_runs_the_bundle_and_reports_its_best_epoch(api, local_dataset, demo_zips):
    exp = seg_experiment(api, local_dataset, demo_zips)
    job_id = start(api, exp, {"epochs": 2, "val_interval": 1, "finetune": True})
    running = wait_status(api, exp, job_id, {"Running", "Done"})
    assert running["status"] in {"Running", "Done"}
    done = wait_status(api, exp, job_id, {"Done", "Error"})
    assert done["status"] == "Done", done["result"]
    result = done["result"]
    assert result["epoch"] in (1, 2) and result["max_epoch"] == 2
    assert result["key_metric"] > 0.8  # fine-tuned from a model that already segments the spheres
    assert result["time_per_epoch"] > 0 and "eta" in result
    logs = api.get(f"experiments/{exp['id']}/jobs/{job_id}/logs")
    assert logs.status_code == 200 and "Epoch" in logs.text
    tar = api.get(f"experiments/{exp['id']}/jobs/{job_id}:download")
    assert tar.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        names = archive.getnames()
    assert f"{job_id}/results/models/model.pt" in names
    assert f"{job_id}/results/configs/train_resolved.json" in names
    listed = api.get(f"experiments/{exp['id']}/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert api.get(f"experiments/{exp['id']}").json()["jobs"] == [job_id]
    cancel = api.post(f"experiments/{exp['id']}/jobs/{job_id}:cancel")
    assert cancel.status_code == 200 and "already ended" in cancel.json()["message"]
    assert api.delete(f"experiments/{exp['id']}/jobs/{job_id}").status_code == 200


def test_results_are_uploaded_to_the_workspace(api, local_dataset, demo_zips, s3_server):
    client = s3_client(s3_server)
    client.create_bucket(Bucket="trainresults")
    ws = api.post(
        "workspaces",
        json={
            "name": "ws",
            "cloud_type": "aws",
            "cloud_specific_details": {
                "cloud_bucket_name": "trainresults",
                "access_key": s3_server.key,
                "secret_key": s3_server.secret,
                "endpoint_url": s3_server.endpoint_url,
            },
        },
    ).json()
    exp = seg_experiment(api, local_dataset, demo_zips, workspace=ws["id"])
    job_id = start(api, exp, {"epochs": 1})
    assert wait_status(api, exp, job_id, {"Done", "Error"})["status"] == "Done"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="trainresults")["Contents"]}
    assert f"results/{job_id}/models/model.pt" in keys
    assert f"results/{job_id}/logs.txt" in keys


def test_cancel_kills_the_whole_process_tree(api, local_dataset, demo_zips):
    exp = seg_experiment(api, local_dataset, demo_zips)
    job_id = start(api, exp, {"epochs": 500})
    wait_status(api, exp, job_id, {"Running"})
    pid = wait_for(lambda: api.ctx.jobs._procs.get(job_id) and api.ctx.jobs._procs[job_id].pid)
    refused = api.delete(f"experiments/{exp['id']}/jobs/{job_id}")
    assert refused.status_code == 400
    assert api.delete(f"experiments/{exp['id']}").json()["error_desc"] == "Experiment in use"
    resp = api.post(f"experiments/{exp['id']}/jobs/{job_id}:cancel")
    assert resp.status_code == 200 and resp.json() == {"message": f"Running job {job_id} cancelled"}
    assert wait_status(api, exp, job_id, {"Canceled"})["status"] == "Canceled"
    status = Path(f"/proc/{pid}/status")
    wait_for(lambda: not status.exists() or "zombie" in status.read_text().lower(), what="the worker to be gone")


def test_killed_worker_becomes_error_with_a_message(api, local_dataset, demo_zips):
    exp = seg_experiment(api, local_dataset, demo_zips)
    job_id = start(api, exp, {"epochs": 500})
    wait_status(api, exp, job_id, {"Running"})
    pid = wait_for(lambda: api.ctx.jobs._procs.get(job_id) and api.ctx.jobs._procs[job_id].pid)
    os.kill(pid, signal.SIGKILL)
    failed = wait_status(api, exp, job_id, {"Error"})
    assert "died" in failed["result"]["detailed_status"]["message"]


def test_jobs_beyond_the_limit_wait_pending(api, local_dataset, demo_zips):
    exp = seg_experiment(api, local_dataset, demo_zips)
    first = start(api, exp, {"epochs": 500})
    second = start(api, exp, {"epochs": 1})
    wait_status(api, exp, first, {"Running"})
    assert job(api, exp, second)["status"] == "Pending"
    logs = api.get(f"experiments/{exp['id']}/jobs/{second}/logs")
    assert logs.status_code == 400 and logs.json()["error_desc"] == "Logs for the job are not available yet."
    api.post(f"experiments/{exp['id']}/jobs/{first}:cancel")
    assert wait_status(api, exp, second, {"Done", "Error"})["status"] == "Done"


def test_restart_turns_orphaned_running_jobs_into_errors(tmp_path, local_dataset, demo_zips):
    from conftest import make_api

    from medcloud.jobs.orm import Job

    data_dir = tmp_path / "restart"
    with make_api(data_dir) as api:
        exp = seg_experiment(api, local_dataset, demo_zips)
        job_id = start(api, exp, {"epochs": 500})
        wait_status(api, exp, job_id, {"Running"})
        pid = wait_for(lambda: api.ctx.jobs._procs.get(job_id) and api.ctx.jobs._procs[job_id].pid)
        os.killpg(pid, signal.SIGKILL)  # the machine "restarts": the worker dies with the server
        api.ctx.runner._running.clear()  # nor its scheduler
        api.ctx.jobs._procs.clear()
        with api.ctx.db.session() as session:  # as if the server died before noticing
            assert session.get(Job, job_id).status == "Running"
    with make_api(data_dir) as api:
        failed = job(api, exp, job_id)
        assert failed["status"] == "Error"
        assert "process is gone" in failed["result"]["detailed_status"]["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"action": "train", "specs": {"bundle_root": "/tmp"}}, "may not set bundle_root"),
        ({"action": "train", "specs": {"ckpt_dir": "/tmp"}}, "may not set ckpt_dir"),
        ({"action": "train", "specs": {"config_file": "configs/nope.json"}}, "no configs/nope.json"),
        ({"action": "train", "specs": []}, "Field `specs`"),
        ({"action": "annotation", "specs": {"round_size": 0}}, "round_size"),
        ({"action": "annotation", "specs": {"stop_criteria": 3}}, "stop_criteria"),
        ({"action": "annotation", "specs": {"train_spec": {"workflow_type": "x"}}}, "may not set workflow_type"),
        ({"action": "batchinfer", "specs": {"train_job_id": "nope"}}, "not a valid UUID"),
        ({"action": "batchinfer", "specs": {"train_job_id": UNKNOWN}}, "not a finished train job"),
        ({"action": "train", "specs": {}, "parent_job_id": UNKNOWN}, "parent_job_id"),
    ],
)
def test_bad_job_requests_are_400_and_create_nothing(api, local_dataset, demo_zips, body, fragment):
    exp = seg_experiment(api, local_dataset, demo_zips)
    resp = api.post(f"experiments/{exp['id']}/jobs", json=body)
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error_desc"]
    assert api.get(f"experiments/{exp['id']}/jobs").json()["jobs"] == []


def test_job_ids_unknown_foreign_or_malformed(api, local_dataset, demo_zips):
    exp = seg_experiment(api, local_dataset, demo_zips)
    base = f"experiments/{exp['id']}/jobs"
    assert api.get(f"{base}/{UNKNOWN}").status_code == 404
    assert api.get(f"{base}/nope").json()["error_desc"] == "Job ID passed is not a valid UUID"
    assert api.post(f"{base}/{UNKNOWN}:cancel").status_code == 404
    assert api.get(f"{base}/{UNKNOWN}:download").status_code == 404
    assert api.get(base, user="bob").status_code == 404


def test_results_go_to_inline_cloud_details_of_older_clients(api, local_dataset, demo_zips, s3_server):
    client = s3_client(s3_server)
    client.create_bucket(Bucket="inlineresults")
    exp = seg_experiment(
        api,
        local_dataset,
        demo_zips,
        cloud_details={
            "cloud_type": "aws",
            "cloud_specific_details": {
                "cloud_bucket_name": "inlineresults",
                "access_key": s3_server.key,
                "secret_key": s3_server.secret,
                "endpoint_url": s3_server.endpoint_url,
            },
        },
    )
    assert s3_server.secret not in str(exp)
    job_id = start(api, exp, {"epochs": 1})
    assert wait_status(api, exp, job_id, {"Done", "Error"})["status"] == "Done"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="inlineresults")["Contents"]}
    assert f"results/{job_id}/models/model.pt" in keys
