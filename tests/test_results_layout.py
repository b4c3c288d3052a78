"""`MEDCLOUD_RESULTS_LAYOUT`: a train job's results land where the seed guide (`results/{job_id}/`) or the
hosted service's notebooks (`shared/orgs/{org}/users/{user_id}/jobs/{job_id}/`) read them, in a real S3 store."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest
from builders import seg_experiment, start, wait_status
from conftest import make_api
from services import s3_client

from medcloud.jobs.ticket import JobTicket, ResultsTarget

pytest_plugins = ["services"]  # the session fixture `s3_server`


def test_the_layout_names_the_job_folder_and_survives_the_ticket() -> None:
    seed = ResultsTarget("aws", {}, {}, org="acme", user_id="u-1")
    ngc = ResultsTarget("aws", {}, {}, layout="ngc", org="acme", user_id="u-1")
    assert seed.folder("j-1") == "results/j-1"
    assert ngc.folder("j-1") == "shared/orgs/acme/users/u-1/jobs/j-1"
    ticket = JobTicket(job_id="j-1", action="train", experiment_id="e", network_arch="monai_custom", bundle_dir="/b")
    ticket.results = ngc
    assert JobTicket.from_json(ticket.to_json()).results == ngc
    raw = json.loads(ticket.to_json())
    raw["results"] = {k: raw["results"][k] for k in ("cloud_type", "details", "secrets")}
    old = JobTicket.from_json(json.dumps(raw))
    assert old.results is not None and old.results.folder("j-1") == "results/j-1"  # a ticket written before
    for bad in (ResultsTarget("aws", {}, {}, layout="ngc", org="../x", user_id="u"), ResultsTarget("aws", {}, {}, "x")):
        with pytest.raises(ValueError):
            bad.folder("j-1")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["results", "ngc"])
def test_train_checkpoint_lands_under_the_chosen_layout(tmp_path, s3_server, local_dataset, demo_zips, layout):
    bucket = f"layout-{layout}-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3_server)
    client.create_bucket(Bucket=bucket)
    settings = {} if layout == "results" else {"results_layout": layout}  # `results` is the default
    with make_api(tmp_path / "data", **settings) as api:
        user_id = api.client.post("/api/v1/login", json={"ngc_api_key": api.keys["alice"]}).json()["user_id"]
        details = {
            "cloud_bucket_name": bucket,
            "access_key": s3_server.key,
            "secret_key": s3_server.secret,
            "endpoint_url": s3_server.endpoint_url,
        }
        ws = api.post("workspaces", json={"name": "ws", "cloud_type": "aws", "cloud_specific_details": details})
        assert ws.status_code == 201, ws.text
        exp = seg_experiment(api, local_dataset, demo_zips, workspace=ws.json()["id"])
        job_id = start(api, exp, {"epochs": 1})
        done = wait_status(api, exp, job_id, {"Done", "Error"})
        assert done["status"] == "Done", done["result"]
        tar = api.get(f"experiments/{exp['id']}/jobs/{job_id}:download")
        with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
            checkpoint = archive.extractfile(f"{job_id}/results/models/model.pt").read()  # type: ignore[union-attr]
    folder = f"results/{job_id}" if layout == "results" else f"shared/orgs/acme/users/{user_id}/jobs/{job_id}"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"{folder}/models/model.pt" in keys and f"{folder}/logs.txt" in keys
    assert done["result"]["results_folder"] == f"s3://{bucket}/{folder}"  # the job says where they went
    assert all(key.startswith(f"{folder}/") for key in keys), keys  # nothing anywhere else
    assert client.get_object(Bucket=bucket, Key=f"{folder}/models/model.pt")["Body"].read() == checkpoint
