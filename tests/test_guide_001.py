"""Guide 001 ("Annotation and Continual Learning") run as written against `medcloud serve`.

Real Orthanc (DICOMweb), Azurite (the workspace), a real MLflow server, and a small VISTA-3D bundle
in the official layout as `MEDCLOUD_VISTA3D_BUNDLE`. Only the host, the key (MONAI_API_KEY), the
DICOMweb/storage/MLflow locations are changed. Between the point-prompt cell and the log cell the test
does what the annotator does in OHIF: store a DICOM SEG and run the guide's own notify snippet.
"""

from __future__ import annotations

import time

from dicom_data import store_ct, store_seg
from guides import ORG, create_key, guide_cells, guide_snippet, medcloud_serve, requires_guides, substitute
from helpers import wait_for
from services import AZURITE_ACCOUNT

pytestmark = requires_guides

GUIDE_LABELS = {"1": "liver", "2": "kidney", "3": "spleen", "4": "pancreas", "5": "right kidney"}
POINT_PROMPT_CELL = 11


def test_guide_001_runs_as_written(empty_orthanc, azurite, mlflow_url, vista_bundle, tmp_path, monkeypatch):
    from azure.storage.blob import BlobServiceClient

    series = [store_ct(empty_orthanc, seed=300 + i, shape=(64, 64, 64)) for i in range(2)]
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container("guide001")
    data_dir = tmp_path / "server"
    monkeypatch.setenv("MONAI_API_KEY", create_key(data_dir, ORG, "annotator"))
    env = {
        "MEDCLOUD_VISTA3D_BUNDLE": str(vista_bundle),
        "MEDCLOUD_AZURE_BLOB_ENDPOINT": azurite.endpoint.replace(AZURITE_ACCOUNT, "{account}"),
    }
    with medcloud_serve(data_dir, env=env) as server:
        replacements = {
            "host_url": server.url,
            "dicom_web_endpoint": empty_orthanc.url,
            "dicom_client_id": empty_orthanc.user,
            "dicom_client_secret": empty_orthanc.password,
            "access_id": AZURITE_ACCOUNT,
            "access_secret": azurite.key,
            "cs_bucket": "guide001",
            "use_mlflow": True,
            "mlflow_server_address": mlflow_url,
            "mlflow_experiment_name": "guide001",
        }
        ns: dict = {}
        cells = guide_cells("001")
        assert len(cells) == 19
        for index, cell in enumerate(cells):
            exec(compile(substitute(cell, replacements), f"guide-001-cell-{index}", "exec"), ns)  # noqa: S102
            if index == POINT_PROMPT_CELL:
                annotate_and_notify(ns, empty_orthanc, series)
        train_jobs = [j for j in ns["job_metas"] if j["id"] != ns["cl_job_id"]]
        assert train_jobs and train_jobs[0]["status"] == "Done"
        assert isinstance(train_jobs[0]["result"]["key_metric"], float)
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("guide001")
    names = [b.name for b in blobs.list_blobs(name_starts_with=f"results/{train_jobs[0]['id']}/")]
    assert any(n.endswith("logs.txt") for n in names)
    assert ns["response"].status_code == 200  # the last cell deleted the workspace


def annotate_and_notify(ns: dict, orthanc, series) -> None:
    """What the annotator does in OHIF: save a SEG of the image, press "Notify Server"; then wait a round."""
    import requests

    image = next(s for s in series if s.uid == ns["inference_image_id"])
    label_id = store_seg(orthanc, image, {"3": "spleen"})
    snippet = guide_snippet("001", '"action": "notify"').replace('"<series_id_1>"', repr(label_id))
    exec(compile(snippet, "guide-001-notify", "exec"), ns)  # noqa: S102
    assert ns["response"].status_code == 201
    base, headers, experiment_id = ns["base_url"], ns["headers"], ns["experiment_id"]

    def finished_train_job() -> bool:
        jobs = requests.get(f"{base}/experiments/{experiment_id}/jobs", headers=headers, timeout=30).json()["jobs"]
        return any(j["action"] == "train" and j["status"] in ("Done", "Error") for j in jobs)

    started = time.monotonic()
    wait_for(finished_train_job, timeout=600, what="the first continual-learning round")
    assert time.monotonic() - started < 600
