"""Experiments: bad input is a clear 400/404 and leaves nothing half-created; list parameters work."""

from __future__ import annotations

import zipfile

import pytest
from builders import create_dataset, create_experiment, manifest_entries

from medcloud.bundles.fetch import BAD_BUNDLE


def experiment_dirs(api):
    root = api.ctx.settings.data_dir / "experiments"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def assert_nothing_created(api):
    assert api.get("experiments", params={"user_only": "true"}).json()["experiments"] == []
    assert experiment_dirs(api) == []
    assert not any(h.alive for h in api.ctx.hosts._hosts.values())


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("bundle", ["missing", "not-an-archive", "no-metadata", "bad-json", "escaping", "no-inference"])
def test_bad_bundles_are_400_with_the_reference_sentence(api, local_dataset, tmp_path, bundle):
    dataset_id = create_dataset(api, local_dataset)
    paths = {
        "missing": tmp_path / "nope.zip",
        "not-an-archive": tmp_path / "junk.zip",
        "no-metadata": make_zip(tmp_path / "b.zip", {"b/configs/inference.json": b"{}"}),
        "bad-json": make_zip(tmp_path / "b.zip", {"b/configs/metadata.json": b"{not json"}),
        "escaping": make_zip(tmp_path / "b.zip", {"../evil/configs/metadata.json": b"{}"}),
        "no-inference": make_zip(tmp_path / "b.zip", {"b/configs/metadata.json": b"{}"}),
    }
    (tmp_path / "junk.zip").write_bytes(b"this is not an archive")
    resp = api.post(
        "experiments",
        json={
            "name": "x",
            "network_arch": "monai_custom",
            "train_datasets": [dataset_id],
            "realtime_infer": True,
            "bundle_url": str(paths[bundle]),
        },
    )
    assert resp.status_code == 400
    assert resp.json() == {"error_desc": BAD_BUNDLE, "error_code": 400}
    assert_nothing_created(api)
    assert not (tmp_path.parent / "evil").exists()


def test_bundle_whose_weights_do_not_load_is_400_and_nothing_is_left(api, local_dataset, demo_bundles, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demo_bundles["segmentation"], broken)
    (broken / "models" / "model.pt").write_bytes(b"not a checkpoint")
    dataset_id = create_dataset(api, local_dataset)
    resp = api.post(
        "experiments",
        json={
            "name": "x",
            "network_arch": "monai_custom",
            "train_datasets": [dataset_id],
            "realtime_infer": True,
            "bundle_url": f"file://{broken}",
        },
    )
    assert resp.status_code == 400
    assert resp.json()["error_desc"].startswith("Error: the model could not be loaded")
    assert_nothing_created(api)


def test_bundle_host_not_allowed_is_400(api, local_dataset):
    dataset_id = create_dataset(api, local_dataset)
    resp = api.post(
        "experiments",
        json={
            "name": "x",
            "network_arch": "monai_custom",
            "train_datasets": [dataset_id],
            "bundle_url": "https://evil.example.com/bundle.zip",
        },
    )
    assert resp.status_code == 400 and "not allowed" in resp.json()["error_desc"]
    assert_nothing_created(api)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"network_arch": "monai_custom"}, "Field `name`"),
        ({"name": "x"}, "Field `network_arch`"),
        ({"name": "x", "network_arch": "resnet"}, "Field `network_arch`"),
        ({"name": 5, "network_arch": "monai_custom", "bundle_url": "/x"}, "Field `name`"),
        ({"name": "x", "network_arch": "monai_custom"}, "bundle_url is required"),
        ({"name": "x", "network_arch": "monai_custom", "bundle_url": "/x", "train_datasets": "abc"}, "train_datasets"),
        (
            {"name": "x", "network_arch": "monai_custom", "bundle_url": "/x", "train_datasets": ["abc"]},
            "Dataset ID passed is not a valid UUID",
        ),
        (
            {
                "name": "x",
                "network_arch": "monai_custom",
                "bundle_url": "/x",
                "train_datasets": ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"],
            },
            "does not exist",
        ),
        (
            {"name": "x", "network_arch": "monai_custom", "bundle_url": "/x", "model_params": {"labels": {}}},
            "Labels cannot be empty",
        ),
        (
            {"name": "x", "network_arch": "monai_custom", "bundle_url": "/x", "model_params": {"labels": {"a": "b"}}},
            "label index",
        ),
        (
            {
                "name": "x",
                "network_arch": "monai_custom",
                "bundle_url": "/x",
                "model_params": {"override": {"bundle_root": "/etc"}},
            },
            "override may not set bundle_root",
        ),
        (
            {"name": "x", "network_arch": "monai_custom", "bundle_url": "/x", "realtime_infer_request_timeout": -1},
            "realtime_infer_request_timeout",
        ),
        ({"name": "x", "network_arch": "monai_vista3d"}, "base_experiment"),
    ],
)
def test_invalid_experiment_bodies_are_400(api, body, fragment):
    resp = api.post("experiments", json=body)
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error_desc"]
    assert_nothing_created(api)


def test_other_users_dataset_cannot_be_referenced(api, local_dataset, demo_zips):
    bobs = create_dataset(api, local_dataset, user="bob")
    resp = api.post(
        "experiments",
        json={
            "name": "x",
            "network_arch": "monai_custom",
            "train_datasets": [bobs],
            "bundle_url": f"file://{demo_zips['segmentation']}",
        },
    )
    assert resp.status_code == 400 and "does not exist" in resp.json()["error_desc"]


def test_unknown_and_foreign_experiment_ids_are_404(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["classification"], realtime_infer=False)
    unknown = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    for method in ("get", "delete"):
        assert getattr(api, method)(f"experiments/{unknown}").status_code == 404
        assert getattr(api, method)(f"experiments/{exp['id']}", user="bob").status_code == 404
    assert api.patch(f"experiments/{exp['id']}", user="bob", json={"name": "y"}).status_code == 404
    job = {"action": "inference", "specs": {"image": "x"}}
    assert api.post(f"experiments/{exp['id']}/jobs", user="bob", json=job).status_code == 404
    assert api.get(f"experiments/{exp['id']}").status_code == 200  # still there


def test_inference_bad_specs_are_400(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, demo_zips["classification"])
    jobs = f"experiments/{exp['id']}/jobs"
    cases = [
        ({"action": "inference", "specs": {}}, "Spec is missing `image`"),
        ({"action": "inference", "specs": {"image": 7}}, "Field `image`"),
        ({"action": "inference", "specs": {"image": "no-such-image"}}, "no-such-image"),
        ({"action": "inference", "specs": {"image": "x", "dataset_id": "nope"}}, "not a valid UUID"),
        ({"action": "explode", "specs": {}}, "Field `action`"),
        ({"specs": {}}, "Field `action`"),
    ]
    for body, fragment in cases:
        resp = api.post(jobs, json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert fragment in resp.json()["error_desc"], (body, resp.json())
    image_id = manifest_entries(local_dataset)[-1]["image"]["id"]
    assert api.post(jobs, json={"action": "inference", "specs": {"image": image_id}}).status_code == 201


def test_inference_on_an_image_url_downloads_it_once(api, local_dataset, demo_zips):
    import http.server
    import threading
    from functools import partial

    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(local_dataset)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dataset_id = create_dataset(api, local_dataset)
        exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
        url = f"http://127.0.0.1:{server.server_port}/imagesTr/ct_001.nii.gz"
        for _ in range(2):
            resp = api.post(f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": url}})
            assert resp.status_code == 201, resp.text
        assert hits == ["/imagesTr/ct_001.nii.gz"]
    finally:
        server.shutdown()


def test_list_parameters(api, local_dataset, demo_zips):
    dataset_id = create_dataset(api, local_dataset)
    for name in ("b", "a", "c"):
        create_experiment(api, dataset_id, demo_zips["classification"], realtime_infer=False, name=name)
    names = [
        e["name"]
        for e in api.get("experiments", params={"user_only": "true", "sort": "name-ascending"}).json()["experiments"]
    ]
    assert names == ["a", "b", "c"]
    page = api.get("experiments", params={"user_only": "true", "skip": 1, "size": 1, "sort": "name-descending"}).json()
    assert [e["name"] for e in page["experiments"]] == ["b"]
    assert page["pagination_info"] == {"total_records": 3, "total_pages": 3, "page_size": 1, "page_index": 1}
    everything = api.get("experiments").json()["experiments"]
    assert any(e["network_arch"] == "monai_vista3d" for e in everything)
    not_vista = api.get("experiments", params={"network_arch": "!monai_vista3d"}).json()["experiments"]
    assert sorted(e["name"] for e in not_vista) == ["MONAI Annotation (DeepEdit)", "a", "b", "c"]
    assert api.get("experiments", params={"sort": "sideways"}).status_code == 400
    assert api.get("experiments", params={"size": "many"}).status_code == 400
    assert api.get("experiments", user="bob", params={"user_only": "true"}).json()["experiments"] == []


def test_base_experiments_list_vista3d_with_a_stable_id(api):
    base = api.get("experiments:base").json()["experiments"]
    vista = next(e for e in base if e["network_arch"] == "monai_vista3d")
    assert vista["name"] == "MONAI VISTA3d" and vista["realtime_infer_support"] is True
    assert len(vista["model_params"]["labels"]) == 132
    assert vista["model_params"]["labels"]["1"] == "liver" and "0" not in vista["model_params"]["labels"]
    assert set(vista["actions"]) >= {"train", "inference", "annotation", "batchinfer"}
    from medcloud.experiments.catalogue import stable_id

    assert vista["id"] == stable_id("MONAI VISTA3d", vista["version"])
    assert api.get(f"experiments/{vista['id']}").json()["name"] == "MONAI VISTA3d"
