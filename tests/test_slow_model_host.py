"""A model that loads slower than one request may take: started with the host start timeout, also after a restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from builders import create_dataset, create_experiment, manifest_entries
from conftest import make_api
from helpers import csv_rows, multipart_parts

LOAD_S = 4  # the bundle's own `initialize` sleeps this long, on top of importing MONAI and loading weights
REQUEST_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def slow_bundle(demo_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo classification bundle whose loading sleeps `LOAD_S` seconds (zip)."""
    from medcloud.demo.bundles import pack_bundle

    folder = tmp_path_factory.mktemp("slow") / "slow_classification"
    shutil.copytree(demo_bundles["classification"], folder)
    config_path = folder / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["initialize"] = [*config.get("initialize", []), f"$__import__('time').sleep({LOAD_S})"]
    config_path.write_text(json.dumps(config, indent=4))
    return pack_bundle(folder, tmp_path_factory.mktemp("slowzip"), "zip")


def infer(api, exp_id: str, image_id: str):  # type: ignore[no-untyped-def]
    return api.post(f"experiments/{exp_id}/jobs", json={"action": "inference", "specs": {"image": image_id}})


def test_slow_model_starts_and_restarts_lazily_within_the_host_start_timeout(tmp_path, local_dataset, slow_bundle):
    data_dir = tmp_path / "data"
    png = next(e for e in manifest_entries(local_dataset) if e["image"]["path"][0].endswith(".png"))
    with make_api(data_dir, host_start_timeout_s=120) as api:
        dataset_id = create_dataset(api, local_dataset)
        # Loading takes longer than a request may: creating the experiment waits for the load, not the request.
        exp = create_experiment(api, dataset_id, slow_bundle, realtime_infer_request_timeout=REQUEST_TIMEOUT_S)
        assert api.ctx.hosts.host(exp["id"]).alive
        first = infer(api, exp["id"], png["image"]["id"])
        assert first.status_code == 201, first.text
    with make_api(data_dir, host_start_timeout_s=120) as api:
        assert api.ctx.hosts.host(exp["id"]) is None  # after a restart the host starts on the next request
        again = infer(api, exp["id"], png["image"]["id"])
        assert again.status_code == 201, again.text
        scores = [csv_rows(next(iter(multipart_parts(r).values())))[0][1:] for r in (first, again)]
        assert scores[0] == scores[1]  # the same model answers (the image path in column 0 is per request)
    with make_api(data_dir, host_start_timeout_s=1) as api:  # the setting is what bounds the load
        refused = infer(api, exp["id"], png["image"]["id"])
        assert refused.status_code == 503, refused.text
        assert "did not load the model within 1 s" in refused.json()["error_desc"]
        assert api.ctx.hosts.host(exp["id"]) is None
