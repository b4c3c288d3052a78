"""A job's log carries the training's own lines, not the storage clients' request and header dumps."""

from __future__ import annotations

import re

import pytest
from builders import segmentation_body, start, wait_status
from services import AZURITE_ACCOUNT, upload_folder_to_azure, upload_folder_to_s3

from medcloud.logs import NOISY_LOGGERS

# What the storage clients print per request when their loggers are left at INFO or DEBUG: Azure's
# http_logging_policy ("Request URL: ...", "Request headers:", one "    'x-ms-...': ..." line per header),
# urllib3's and botocore's request lines.
HEADER_DUMP = re.compile(
    r"Request URL:|Request method:|Request headers:|Response status:|Response headers:|"
    r"^\s+'[\w-]+': '|x-ms-|Starting new HTTP|Making request for|Sending http request|HTTP/1\.1\" \d{3}",
)


def _dataset_on(store: str, api, azurite, s3_server, local_dataset) -> str:
    """The demo dataset uploaded to Azurite or moto, registered with its credentials; its id."""
    if store == "azure":
        upload_folder_to_azure(azurite, local_dataset, "joblogs", "ds")
        body = {
            "client_url": f"{azurite.endpoint}/joblogs/ds",
            "client_id": AZURITE_ACCOUNT,
            "client_secret": azurite.key,
        }
    else:
        upload_folder_to_s3(s3_server, local_dataset, "joblogs", "ds")
        body = {
            "client_url": f"{s3_server.endpoint_url}/joblogs/ds",
            "client_id": s3_server.key,
            "client_secret": s3_server.secret,
        }
    resp = api.post("datasets", json={"name": f"on-{store}", "format": "monai", **body})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.mark.parametrize("store", ["azure", "s3"])
def test_train_log_on_object_storage_has_epoch_lines_and_no_http_header_dumps(
    store, api, azurite, s3_server, local_dataset, demo_zips
):
    dataset_id = _dataset_on(store, api, azurite, s3_server, local_dataset)
    resp = api.post("experiments", json=segmentation_body(dataset_id, demo_zips, name="logs"))
    assert resp.status_code == 201, resp.text
    exp = resp.json()
    job_id = start(api, exp, {"epochs": 2, "val_interval": 1})
    done = wait_status(api, exp, job_id, {"Done", "Error"})
    assert done["status"] == "Done", done["result"]
    logs = api.get(f"experiments/{exp['id']}/jobs/{job_id}/logs")
    assert logs.status_code == 200
    lines = logs.text.splitlines()
    # The images came from the object store: the worker staged them (3 labeled CTs, train and validation).
    assert any("Data lists ready" in line and "3 training, 3 validation images" in line for line in lines), logs.text
    # The training's own lines: the trainer's per-epoch summary for both epochs and the validation metric.
    for epoch in (1, 2):
        assert any(f"Epoch[{epoch}] Complete" in line for line in lines), logs.text
    assert any("Key metric" in line for line in lines), logs.text
    dumps = [line for line in lines if HEADER_DUMP.search(line)]
    assert not dumps, f"{len(dumps)} of {len(lines)} log lines are HTTP request/header dumps, e.g. {dumps[:5]}"
    noisy = [line for line in lines if any(f" {name}: " in line or f" - {name} - " in line for name in NOISY_LOGGERS)]
    assert not noisy, f"storage client lines in the job log: {noisy[:5]}"
