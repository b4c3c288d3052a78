"""Real-time inference on custom bundles: warm hosts, content of the multipart reply, stop and delete."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from builders import create_dataset, create_experiment, manifest_entries
from helpers import csv_rows, dice, multipart_parts, nifti_array, nrrd_voxels, wait_for


def test_segmentation_inference_returns_raw_nrrd_on_the_original_grid(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
    assert exp["model_params"]["labels"] == {"1": "spleen"}  # filled from the bundle's channel_def
    assert api.ctx.hosts.host(exp["id"]).alive  # warm before 201
    entry = manifest_entries(local_dataset)[0]
    resp = api.post(
        f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": entry["image"]["id"]}}
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = multipart_parts(resp)
    assert list(parts) == ["ct_000_seg.nrrd"]
    truth = nifti_array(local_dataset / entry["label"]["path"][0])
    seg = nrrd_voxels(parts["ct_000_seg.nrrd"], truth.shape)
    assert set(np.unique(seg)) <= {0, 1}
    assert dice(seg, truth) > 0.8


def test_classification_csv_under_the_overridden_name(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(
        api,
        dataset_id,
        demo_zips["classification"],
        model_params={"override": {"output_filename": "realtime_inference_predictions.csv"}},
    )
    pngs = [e for e in manifest_entries(local_dataset) if e["image"]["path"][0].endswith(".png")]
    for expected_class, entry in ((0, pngs[0]), (1, pngs[1])):
        resp = api.post(
            f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": entry["image"]["id"]}}
        )
        assert resp.status_code == 201, resp.text
        parts = multipart_parts(resp)
        assert list(parts) == ["realtime_inference_predictions.csv"]
        rows = csv_rows(parts["realtime_inference_predictions.csv"])
        assert len(rows) == 1  # one row per request: nothing left over from earlier requests
        assert rows[0][0].endswith(os.path.basename(entry["image"]["path"][0]))
        scores = [float(v) for v in rows[0][1:]]
        assert len(scores) == 2 and int(np.argmax(scores)) == expected_class


def test_patch_stops_host_and_inference_then_fails_clearly(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
    host = api.ctx.hosts.host(exp["id"])
    resp = api.patch(f"experiments/{exp['id']}", json={"realtime_infer": False})
    assert resp.status_code == 200 and resp.json()["realtime_infer"] is False
    assert not host.alive and api.ctx.hosts.host(exp["id"]) is None
    again = api.patch(f"experiments/{exp['id']}", json={"realtime_infer": True})
    assert again.status_code == 400
    assert again.json()["error_desc"] == "Can only change realtime_infer from True to False."
    image_id = manifest_entries(local_dataset)[0]["image"]["id"]
    resp = api.post(f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": image_id}})
    assert resp.status_code == 400 and "real-time inference is off" in resp.json()["error_desc"]


def test_delete_stops_host_then_dataset_can_go(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
    host = api.ctx.hosts.host(exp["id"])
    refused = api.delete(f"datasets/{dataset_id}")
    assert refused.status_code == 400 and "in use" in refused.json()["error_desc"]
    resp = api.delete(f"experiments/{exp['id']}")
    assert resp.status_code == 200 and resp.json()["id"] == exp["id"]
    assert not host.alive
    assert not (api.ctx.settings.data_dir / "experiments" / exp["id"]).exists()
    assert api.get(f"experiments/{exp['id']}").status_code == 404
    assert api.delete(f"datasets/{dataset_id}").status_code == 200


def test_dead_host_fails_the_request_clearly_and_restarts_on_the_next(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
    image_id = manifest_entries(local_dataset)[0]["image"]["id"]
    host = api.ctx.hosts.host(exp["id"])
    os.kill(host.pid, signal.SIGKILL)
    wait_for(lambda: not host.alive, what="host to die")
    resp = api.post(f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": image_id}})
    assert resp.status_code == 201, resp.text  # a dead idle host is restarted transparently
    new_host = api.ctx.hosts.host(exp["id"])
    assert new_host.pid != host.pid and new_host.alive


def test_host_dying_mid_request_gives_an_error_not_a_hang(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
    host = api.ctx.hosts.host(exp["id"])
    # A request that dies mid-flight: the host is killed while it computes.
    reply = {}

    def call():
        reply["error"] = None
        try:
            host.call({"op": "infer", "image": "/nonexistent-wait", "params": {}, "out_dir": "/tmp/x"}, 30)
        except Exception as exc:  # noqa: BLE001
            reply["error"] = exc

    import threading

    thread = threading.Thread(target=call)
    thread.start()
    os.kill(host.pid, signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert reply["error"] is not None and "model host" in str(reply["error"])


def test_override_changes_output_name_and_format(api, local_dataset, demo_zips):
    import nibabel as nib

    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(
        api,
        dataset_id,
        demo_zips["segmentation"],
        model_params={"override": {"output_ext": ".nii.gz", "output_postfix": "mask"}},
    )
    entry = manifest_entries(local_dataset)[1]
    resp = api.post(
        f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": entry["image"]["id"]}}
    )
    assert resp.status_code == 201, resp.text
    parts = multipart_parts(resp)
    assert list(parts) == ["ct_001_mask.nii.gz"]
    out = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(parts["ct_001_mask.nii.gz"]))
    truth_img = nib.load(str(local_dataset / entry["label"]["path"][0]))
    assert out.shape == truth_img.shape
    assert np.allclose(out.affine, truth_img.affine, atol=1e-4)
    assert dice(np.asarray(out.dataobj), np.asarray(truth_img.dataobj)) > 0.8


@pytest.mark.parametrize(("fmt", "how"), [("zip", "http"), ("tar", "path"), ("tar.gz", "file"), ("tar.gz", "http")])
def test_bundle_archives_from_every_kind_of_url(api, local_dataset, demo_bundles, tmp_path, fmt, how):
    import http.server
    import threading
    from functools import partial

    from medcloud.demo.bundles import pack_bundle

    archive = pack_bundle(demo_bundles["classification"], tmp_path, fmt)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = {
            "http": f"http://127.0.0.1:{server.server_port}/{archive.name}",
            "path": str(archive),
            "file": f"file://{archive}",
        }[how]
        dataset_id = create_dataset(api, local_dataset)
        resp = api.post(
            "experiments",
            json={
                "name": "x",
                "network_arch": "monai_classification",
                "train_datasets": [dataset_id],
                "bundle_url": url,
            },
        )
        assert resp.status_code == 201, resp.text
        bundle_dir = api.ctx.settings.data_dir / "experiments" / resp.json()["id"] / "bundle"
        assert (bundle_dir / "configs" / "metadata.json").is_file()
        assert resp.json()["model_params"]["labels"] == {"0": "in body", "1": "out body"}
    finally:
        server.shutdown()


def test_patch_bad_input_is_400_and_changes_nothing(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["classification"], realtime_infer=False)
    cases = [
        ({"name": 5}, "Field `name`"),
        ({"realtime_infer": "maybe"}, "realtime_infer"),
        ({"eval_dataset": "nope"}, "not a valid UUID"),
        ({"eval_dataset": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"}, "does not exist"),
        ({"realtime_infer": True}, "Can only change realtime_infer from True to False."),
    ]
    for body, fragment in cases:
        resp = api.patch(f"experiments/{exp['id']}", json=body)
        assert resp.status_code == 400, body
        assert fragment in resp.json()["error_desc"]
    after = api.get(f"experiments/{exp['id']}").json()
    assert after["name"] == exp["name"] and after["eval_dataset"] == dataset_id
    assert api.patch(f"experiments/{exp['id']}", json={"name": "renamed"}).json()["name"] == "renamed"
