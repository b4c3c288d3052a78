"""Inference reads only the experiment owner's datasets: another user's cached image is as unknown as a missing one."""

from __future__ import annotations

from fakes import FakeHosts, tiny_bundle, tiny_dataset
from helpers import multipart_parts, wait_for


def _dataset(api, root, user):  # type: ignore[no-untyped-def]
    body = {"name": "d", "type": "semantic_segmentation", "format": "monai", "client_url": str(root)}
    resp = api.post("datasets", user=user, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _infer(api, exp_id, specs, user="alice"):  # type: ignore[no-untyped-def]
    return api.post(f"experiments/{exp_id}/jobs", user=user, json={"action": "inference", "specs": specs})


def test_another_users_cached_image_is_404_and_no_inference_runs(tmp_path):
    from conftest import make_api

    with make_api(tmp_path / "data", bundle_allow_local_paths=True) as api:
        hosts = FakeHosts(tmp_path / "requests", outputs={"seg.nrrd": b"mask"}).install(api.ctx)
        bobs = _dataset(api, tiny_dataset(tmp_path / "bob", {"scan-b": b"bob's scan"}), "bob")
        resp = api.post(
            f"datasets/{bobs}/jobs", user="bob", json={"action": "cacheimage", "specs": {"image": "scan-b"}}
        )
        assert resp.status_code == 201, resp.text
        wait_for(lambda: api.ctx.cache.lookup(bobs, "scan-b"), 30, "bob's image cached")

        alices = _dataset(api, tiny_dataset(tmp_path / "alice", {"scan-a": b"alice's scan"}), "alice")
        body = {
            "name": "rt",
            "network_arch": "monai_custom",
            "train_datasets": [alices],
            "realtime_infer": True,
            "bundle_url": str(tiny_bundle(tmp_path / "bundle")),
        }
        exp = api.post("experiments", json=body)
        assert exp.status_code == 201, exp.text
        exp_id = exp.json()["id"]

        stolen = _infer(api, exp_id, {"image": "scan-b", "dataset_id": bobs})
        assert stolen.status_code == 404, stolen.text
        assert stolen.json()["error_desc"] == f"Dataset {bobs} not found."
        assert hosts.images == []  # no inference ran

        own = _infer(api, exp_id, {"image": "scan-a"})  # the same request on her own dataset works
        assert own.status_code == 201, own.text
        assert multipart_parts(own) == {"seg.nrrd": b"mask"}
        assert hosts.images == ["alice's scan"]
