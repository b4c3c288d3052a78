"""The annotation viewer with a DeepEdit experiment, in a real browser against a real `medcloud serve`.

Auto-segment sends no clicks; a foreground click sends `{"spleen": [[i,j,k]], "background": []}` (the
bundle's own click format, voxel indices of the image) and adds the darker blob under it; a background
click on a bright blob removes it. Assertions are on the request bodies and on the voxels the page holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import browser
from helpers import dice
from viewer_driver import ORG, Client, ViewerDriver

from medcloud.devserver import create_key, medcloud_serve
from medcloud.families.deepedit.demo import deepedit_ct_volume


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, deepedit_bundle: Path):  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("viewer-deepedit") / "data"
    with medcloud_serve(data_dir, env={"MEDCLOUD_DEEPEDIT_BUNDLE": str(deepedit_bundle)}, timeout_s=180) as server:
        key = create_key(data_dir, ORG, "annotator")
        yield server, key, Client(server.url, key)


def test_deepedit_auto_and_clicks_in_the_viewer(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, key, client = served
    root = tmp_path / "ct"
    volume = deepedit_ct_volume(13, organs=2, ambiguous=1)  # held out: the demo trained on seeds from 2_000_000
    volume.save(root / "images" / "ct.nii.gz")
    (root / "manifest.json").write_text(json.dumps({"data": [{"image": {"path": ["images/ct.nii.gz"], "id": "ct"}}]}))
    dataset_id = client.post("datasets", {"name": "ct", "client_url": str(root)})["id"]
    base = next(
        e["id"] for e in client.get("./experiments:base")["experiments"] if e["network_arch"] == "monai_annotation"
    )
    exp = client.post(
        "experiments",
        {
            "name": "deepedit",
            "network_arch": "monai_annotation",
            "base_experiment": [base],
            "train_datasets": [dataset_id],
            "inference_dataset": dataset_id,
            "realtime_infer": True,
            "realtime_infer_request_timeout": 600,
        },
    )
    with browser() as chromium:
        driver = ViewerDriver.open(chromium, server.url)
        driver.sign_in(key, ORG)
        driver.wait_ready()
        assert driver.state("v.state.experiment.id") == exp["id"]
        assert driver.page.locator("#labels li .name").all_inner_texts() == ["1 spleen"]
        assert driver.next_image() == "ct"

        driver.auto_segment()
        assert not driver.last_inference_specs().get("bundle_params")  # automatic: no clicks
        auto = driver.native_labels()
        assert auto.shape == volume.image.shape
        assert dice(auto == 1, volume.label == 1) > 0.7

        ambiguous, organ = volume.ambiguous[0], volume.organs[0]
        inside = volume.inside(ambiguous)
        driver.click_voxel(tuple(inside), foreground=True)
        assert driver.last_inference_specs()["bundle_params"] == {"spleen": [inside], "background": []}
        grown = driver.native_labels()
        blob = volume.components == ambiguous
        assert (auto[blob] == 1).mean() < 0.3 < 0.6 < (grown[blob] == 1).mean()

        on_organ = volume.inside(organ)
        driver.click_voxel(tuple(on_organ), foreground=False)
        assert driver.last_inference_specs()["bundle_params"] == {"spleen": [inside], "background": [on_organ]}
        after = driver.native_labels()
        assert (after[volume.components == organ] == 1).mean() < 0.3
        assert (after[blob] == 1).mean() > 0.6  # the earlier click still holds
        driver.page.screenshot(path=str(tmp_path / "viewer-deepedit.png"))
        Path("/tmp/viewer-deepedit.png").write_bytes((tmp_path / "viewer-deepedit.png").read_bytes())
        assert driver.page.errors == []
