"""Guide 000 ("Real-time Inference on a Custom MONAI Bundle") run as written against `medcloud serve`.

Only the host, the key (through MONAI_API_KEY, as the guide reads it), the storage location (Azurite)
and the bundle URL (a local HTTP server) are changed.
"""

from __future__ import annotations

import csv
import json

from guides import (
    ORG,
    bundle_server_fixture,  # noqa: F401  (the fixture `bundle_server`: the guide's bundle, served over HTTP)
    create_key,
    guide_cells,
    medcloud_serve,
    requires_guides,
    substitute,
)
from services import AZURITE_ACCOUNT, upload_folder_to_azure

pytestmark = requires_guides


def test_guide_000_runs_as_written(azurite, local_dataset, bundle_server, tmp_path, monkeypatch):
    upload_folder_to_azure(azurite, local_dataset, "guide000", "data")
    entries = json.loads((local_dataset / "manifest.json").read_text())["data"]
    png = next(e for e in entries if e["image"]["path"][0].endswith(".png"))
    data_dir = tmp_path / "server"
    key = create_key(data_dir, ORG, "guide-user")
    monkeypatch.setenv("MONAI_API_KEY", key)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the guide writes the predictions into the current folder
    with medcloud_serve(data_dir) as server:
        replacements = {
            "host_url": server.url,
            "access_id": AZURITE_ACCOUNT,
            "access_secret": azurite.key,
            "container_url": f"{azurite.endpoint}/guide000/data",
            "inference_image_id": png["image"]["id"],
            "bundle_url": bundle_server,
        }
        namespace: dict = {}
        cells = guide_cells("000")
        assert len(cells) == 10
        for cell in cells:
            exec(compile(substitute(cell, replacements), "guide-000", "exec"), namespace)  # noqa: S102
    with open(work / "realtime_inference_predictions.csv") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1
    assert rows[0][0].endswith(png["image"]["path"][0].split("/")[-1])
    scores = [float(v) for v in rows[0][1:]]
    assert len(scores) == 2 and scores.index(max(scores)) == 0  # frame_000 is class 0 ("in body")
    assert namespace["response"].status_code == 200  # the last cell deleted the dataset
