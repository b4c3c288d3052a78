"""Hostile client values: MONAI expressions, server-owned keys, bad file names, path-like ids, bad stop criteria.

Every field that reaches a bundle config is tried with every injection; each must be a 400 naming the key,
with nothing run (a marker file an expression would create stays absent) and nothing stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import create_dataset, manifest_entries, segmentation_body, wait_status
from conftest import make_api
from helpers import multipart_parts, wait_for

from medcloud.errors import Invalid
from medcloud.experiments.orm import Experiment
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job


def injections(marker: Path) -> dict[str, object]:
    """Values MONAI's ConfigParser would run, resolve or instantiate; those that run would create `marker`."""
    create = f"$open({str(marker)!r}, 'w')"
    return {
        "expression": create,
        "getpid": "$__import__('os').getpid()",
        "reference": "@network",
        "macro": "%configs/x.json#y",
        "component": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "in_list": ["plain", create],
        "in_dict": {"a": {"b": create}},
        "leading_spaces": "   " + create,
        "requires": {"_requires_": create},
    }


KINDS = list(injections(Path("/x")))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, demo_zips):
    """One app for the whole module: a dataset, a real-time experiment (warm host) and a plain one."""
    from medcloud.demo.synthetic import write_demo_dataset

    root = tmp_path_factory.mktemp("hostile")
    dataset = write_demo_dataset(root / "dataset").parent
    marker = root / "marker"
    with make_api(root / "data") as api:
        dataset_id = create_dataset(api, dataset)
        common = {
            "network_arch": "monai_segmentation",
            "train_datasets": [dataset_id],
            "eval_dataset": dataset_id,
            "bundle_url": str(demo_zips["segmentation"]),
        }
        rt = api.post("experiments", json={**common, "name": "rt", "realtime_infer": True})
        plain = api.post("experiments", json={**common, "name": "plain"})
        assert rt.status_code == 201 and plain.status_code == 201, (rt.text, plain.text)
        yield SimpleNamespace(
            api=api,
            dataset=dataset,
            dataset_id=dataset_id,
            rt=rt.json(),
            plain=plain.json(),
            marker=marker,
            common=common,
        )


def experiments(api) -> list[str]:
    return [e["id"] for e in api.get("experiments", params={"user_only": "true"}).json()["experiments"]]


def job_ids(api, exp) -> list[str]:
    return [j["id"] for j in api.get(f"experiments/{exp['id']}/jobs").json()["jobs"]]


def assert_refused(resp, key: str, marker: Path) -> None:
    assert resp.status_code == 400, resp.text
    message = resp.json()["error_desc"]
    assert f"`{key}" in message, message  # names the key (a deeper path starts with it)
    assert not marker.exists()  # nothing ran


# Finding 1: every field that reaches a config, with every injection.


@pytest.mark.parametrize("kind", KINDS)
def test_experiment_create_override_is_refused(hostile, kind):
    before = experiments(hostile.api)
    body = {**hostile.common, "name": "x", "model_params": {"override": {"x": injections(hostile.marker)[kind]}}}
    assert_refused(hostile.api.post("experiments", json=body), "model_params.override.x", hostile.marker)
    assert experiments(hostile.api) == before


@pytest.mark.parametrize(
    "key", ["train#trainer#_target_", "network_def::_target_", "validate#handlers#0#_disabled_", "", "a##b"]
)
def test_experiment_create_override_key_reaching_a_special_key_is_refused(hostile, key):
    before = experiments(hostile.api)
    body = {**hostile.common, "name": "x", "model_params": {"override": {key: "x"}}}
    assert_refused(hostile.api.post("experiments", json=body), f"model_params.override.{key}", hostile.marker)
    assert experiments(hostile.api) == before


@pytest.mark.parametrize("kind", KINDS)
def test_experiment_patch_override_is_refused(hostile, kind):
    exp = hostile.plain
    body = {"name": "renamed", "model_params": {"override": {"x": injections(hostile.marker)[kind]}}}
    assert_refused(hostile.api.patch(f"experiments/{exp['id']}", json=body), "model_params.override.x", hostile.marker)
    after = hostile.api.get(f"experiments/{exp['id']}").json()
    assert after["name"] == exp["name"] and after["model_params"] == exp["model_params"]


@pytest.mark.parametrize("kind", KINDS)
def test_inference_bundle_params_are_refused(hostile, kind):
    entry = manifest_entries(hostile.dataset)[0]
    specs = {"image": entry["image"]["id"], "bundle_params": {"x": injections(hostile.marker)[kind]}}
    resp = hostile.api.post(f"experiments/{hostile.rt['id']}/jobs", json={"action": "inference", "specs": specs})
    assert_refused(resp, "specs.bundle_params.x", hostile.marker)


def test_inference_bundle_params_key_cannot_be_a_special_key(hostile):
    entry = manifest_entries(hostile.dataset)[0]
    specs = {"image": entry["image"]["id"], "bundle_params": {"_target_": "builtins.print"}}
    resp = hostile.api.post(f"experiments/{hostile.rt['id']}/jobs", json={"action": "inference", "specs": specs})
    assert_refused(resp, "specs.bundle_params._target_", hostile.marker)


@pytest.mark.parametrize("kind", KINDS)
def test_train_specs_are_refused_and_no_job_is_created(hostile, kind):
    exp = hostile.plain
    before = job_ids(hostile.api, exp)
    specs = {"train#trainer#max_epochs": 1, "x": injections(hostile.marker)[kind]}
    resp = hostile.api.post(f"experiments/{exp['id']}/jobs", json={"action": "train", "specs": specs})
    assert_refused(resp, "specs.x", hostile.marker)
    assert job_ids(hostile.api, exp) == before


@pytest.mark.parametrize("kind", KINDS)
def test_batchinfer_bundle_params_are_refused_and_no_job_is_created(hostile, kind):
    exp = hostile.plain
    before = job_ids(hostile.api, exp)
    specs = {"bundle_params": {"x": injections(hostile.marker)[kind]}}
    resp = hostile.api.post(f"experiments/{exp['id']}/jobs", json={"action": "batchinfer", "specs": specs})
    assert_refused(resp, "specs.bundle_params.x", hostile.marker)
    assert job_ids(hostile.api, exp) == before


@pytest.mark.parametrize("kind", ["expression", "component", "in_list"])
def test_annotation_train_spec_is_refused_and_no_job_is_created(hostile, kind):
    exp = hostile.plain
    before = job_ids(hostile.api, exp)
    specs = {"train_spec": {"x": injections(hostile.marker)[kind]}}
    resp = hostile.api.post(f"experiments/{exp['id']}/jobs", json={"action": "annotation", "specs": specs})
    assert_refused(resp, "specs.train_spec.x", hostile.marker)
    assert job_ids(hostile.api, exp) == before


@pytest.mark.parametrize(
    "key",
    [
        "output_dir",
        "dataset#data",
        "train#dataset#data",
        "validate#dataset#data",
        "train::dataset::data",
        "bundle_root",
        "ckpt_dir",
        "workflow_type",
        "finetune_model_path",
        "run_id",
        "properties_path",
    ],
)
def test_server_owned_train_keys_are_refused_by_name(hostile, key):
    exp = hostile.plain
    before = job_ids(hostile.api, exp)
    resp = hostile.api.post(f"experiments/{exp['id']}/jobs", json={"action": "train", "specs": {key: "x"}})
    assert resp.status_code == 400, resp.text
    assert f"may not set {key}" in resp.json()["error_desc"]
    assert job_ids(hostile.api, exp) == before


@pytest.mark.parametrize("key", ["output_dir", "dataset#data", "dataset::data", "bundle_root"])
def test_server_owned_override_keys_are_refused_by_name(hostile, key):
    before = experiments(hostile.api)
    body = {**hostile.common, "name": "x", "model_params": {"override": {key: "/tmp"}}}
    resp = hostile.api.post("experiments", json=body)
    assert resp.status_code == 400 and f"may not set {key}" in resp.json()["error_desc"], resp.text
    assert experiments(hostile.api) == before


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        ({"config_file": 5}, "`specs.config_file` must be a string or a non-empty list"),
        ({"config_file": []}, "`specs.config_file` must be a string or a non-empty list"),
        ({"config_file": "/etc/passwd"}, "must be a relative path that stays inside the bundle"),
        ({"config_file": ["configs/train.json", "../../x.json"]}, "must be a relative path"),
        ({"logging_file": 5}, "`specs.logging_file` must be a string"),
        ({"logging_file": "/etc/hostname"}, "must be a relative path"),
        ({"meta_file": ["configs/metadata.json"]}, "`specs.meta_file` must be a string"),
        ({"meta_file": "../metadata.json"}, "must be a relative path"),
        ({"tracking": "mlflow", "save_execute_config": "/tmp/x.json"}, "`specs.save_execute_config` must be true"),
    ],
)
def test_bad_bundle_file_specs_are_400(hostile, specs, fragment):
    exp = hostile.plain
    before = job_ids(hostile.api, exp)
    resp = hostile.api.post(f"experiments/{exp['id']}/jobs", json={"action": "train", "specs": specs})
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error_desc"]
    assert job_ids(hostile.api, exp) == before


def test_model_params_image_key_cannot_be_a_special_key(hostile):
    before = experiments(hostile.api)
    body = {**hostile.common, "name": "x", "model_params": {"image_key": "_target_"}}
    assert_refused(hostile.api.post("experiments", json=body), "model_params.image_key", hostile.marker)
    assert experiments(hostile.api) == before


# Finding 1: plain values still work; an operator can allow expressions.


def test_plain_overrides_and_bundle_params_still_work(hostile):
    entry = manifest_entries(hostile.dataset)[1]
    specs = {"image": entry["image"]["id"], "bundle_params": {"note": "user@example.com", "n": 3}}
    resp = hostile.api.post(f"experiments/{hostile.rt['id']}/jobs", json={"action": "inference", "specs": specs})
    assert resp.status_code == 201, resp.text
    assert list(multipart_parts(resp)) == ["ct_001_seg.nrrd"]
    body = {**hostile.common, "name": "ok", "model_params": {"override": {"output_postfix": "mask", "x": "50%"}}}
    created = hostile.api.post("experiments", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["model_params"]["override"] == {"output_postfix": "mask", "x": "50%"}


def test_plain_train_override_trains(tmp_path, local_dataset, demo_zips):
    with make_api(tmp_path / "data") as api:
        dataset_id = create_dataset(api, local_dataset)
        exp = api.post("experiments", json=segmentation_body(dataset_id, demo_zips, name="t")).json()
        specs = {"train#trainer#max_epochs": 1, "config_file": ["configs/train.json"]}
        resp = api.post(f"experiments/{exp['id']}/jobs", json={"action": "train", "specs": specs})
        assert resp.status_code == 201, resp.text
        done = wait_status(api, exp, resp.json(), {"Done", "Error"})
        assert done["status"] == "Done", done["result"]
        assert done["result"]["max_epoch"] == 1


def test_operator_setting_allows_expressions(tmp_path, local_dataset, demo_zips):
    with make_api(tmp_path / "data", allow_expression_overrides=True) as api:
        dataset_id = create_dataset(api, local_dataset)
        override = {"output_postfix": "$'mask'", "x": {"_target_": "builtins.dict"}}
        exp = api.post(
            "experiments",
            json={
                "name": "t",
                "network_arch": "monai_segmentation",
                "train_datasets": [dataset_id],
                "eval_dataset": dataset_id,
                "bundle_url": str(demo_zips["segmentation"]),
                "model_params": {"override": override},
            },
        )
        assert exp.status_code == 201, exp.text
        assert exp.json()["model_params"]["override"] == override
        resp = api.post(f"experiments/{exp.json()['id']}/jobs", json={"action": "train", "specs": {"x": "$1 + 1"}})
        assert resp.status_code == 201, resp.text
        api.post(f"experiments/{exp.json()['id']}/jobs/{resp.json()}:cancel")
        # The keys the server owns stay refused whatever the setting.
        owned = api.post(f"experiments/{exp.json()['id']}/jobs", json={"action": "train", "specs": {"output_dir": "/"}})
        assert owned.status_code == 400 and "may not set output_dir" in owned.json()["error_desc"]
        # ... and the model host, told by the server, evaluates the operator-allowed expression.
        rt = api.post(
            "experiments",
            json={
                "name": "rt",
                "network_arch": "monai_segmentation",
                "train_datasets": [dataset_id],
                "realtime_infer": True,
                "bundle_url": str(demo_zips["segmentation"]),
                "model_params": {"override": {"output_postfix": "$'mask'"}},
            },
        )
        assert rt.status_code == 201, rt.text
        image = json.loads((local_dataset / "manifest.json").read_text())["data"][0]["image"]["id"]
        answer = api.post(
            f"experiments/{rt.json()['id']}/jobs", json={"action": "inference", "specs": {"image": image}}
        )
        assert answer.status_code == 201, answer.text
        assert "_mask.nrrd" in answer.headers["Content-Type"] or b"_mask.nrrd" in answer.content


# Finding 1, in depth: values stored before the checks are refused where they are used.


def test_stored_hostile_override_is_refused_at_inference(hostile):
    api, exp = hostile.api, hostile.rt
    with api.ctx.db.session() as session:
        row = session.get(Experiment, exp["id"])
        row.model_params = {**row.model_params, "override": {"x": f"$open({str(hostile.marker)!r}, 'w')"}}
    try:
        entry = manifest_entries(hostile.dataset)[0]
        resp = api.post(
            f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": entry["image"]["id"]}}
        )
        assert_refused(resp, "model_params.override.x", hostile.marker)
    finally:
        with api.ctx.db.session() as session:
            session.get(Experiment, exp["id"]).model_params = exp["model_params"]


def stored_job(api, exp, action: str, specs: dict) -> str:
    """A job row written straight to the database, as one stored before the checks at creation."""
    with api.ctx.db.session() as session:
        owner = session.get(Experiment, exp["id"])
        job_id = jobs.create(
            session, org=owner.org, user_id=owner.user_id, experiment_id=owner.id, action=action, specs=specs
        ).id
    return job_id


@pytest.mark.parametrize(
    ("action", "specs", "key"),
    [
        ("train", {"train#trainer#max_epochs": "MARKER"}, "specs.train#trainer#max_epochs"),
        ("batchinfer", {"bundle_params": {"x": "MARKER"}}, "specs.bundle_params.x"),
    ],
)
def test_stored_hostile_job_specs_are_refused_by_the_job(hostile, action, specs, key):
    expression = f"$open({str(hostile.marker)!r}, 'w') and 1"
    specs = json.loads(json.dumps(specs).replace('"MARKER"', json.dumps(expression)))
    job_id = stored_job(hostile.api, hostile.plain, action, specs)
    hostile.api.ctx.runner.wake()
    ended = wait_status(hostile.api, hostile.plain, job_id, {"Done", "Error"}, timeout=120)
    assert ended["status"] == "Error", ended
    assert f"`{key}" in ended["result"]["detailed_status"]["message"]
    assert not hostile.marker.exists()


def test_bundle_predictor_refuses_client_values_unless_allowed(demo_bundles, local_dataset, tmp_path):
    from medcloud.inference import nrrd_writer
    from medcloud.inference.predictors import BundlePredictor

    nrrd_writer.register()  # as model hosts do: the real-time default output is raw NRRD
    marker = tmp_path / "marker"
    with pytest.raises(Invalid, match="model_params.override.x"):
        BundlePredictor(demo_bundles["segmentation"], {"x": f"$open({str(marker)!r}, 'w')"})
    predictor = BundlePredictor(demo_bundles["segmentation"], {"output_postfix": "mask"})
    image = str(local_dataset / manifest_entries(local_dataset)[0]["image"]["path"][0])
    with pytest.raises(Invalid, match="bundle_params.x"):
        predictor.predict(image, {"x": f"$open({str(marker)!r}, 'w')"}, tmp_path / "out")
    assert not marker.exists()
    allowed = BundlePredictor(demo_bundles["segmentation"], {"output_postfix": "$'mask'"}, allow_expressions=True)
    allowed.load()
    files = allowed.predict(image, {"x": "$1 + 1"}, tmp_path / "allowed")
    assert [f.name for f in files] == ["ct_000_mask.nrrd"]


# Finding 15: ids that become paths.


@pytest.mark.parametrize("image_id", ["../../x", "..", ".", "a/b", "a\\b", "x\x00y"])
def test_manifest_with_a_path_like_image_id_is_refused(image_id):
    from medcloud.sources.manifest import parse_manifest

    doc = {"data": [{"image": {"id": image_id, "path": "imagesTr/a.nii.gz"}}]}
    with pytest.raises(Invalid) as caught:
        parse_manifest(json.dumps(doc).encode(), source="s3://bucket/manifest.json")
    assert repr(image_id) in caught.value.message and "s3://bucket/manifest.json" in caught.value.message


def test_dataset_with_a_path_like_image_id_is_refused(api, local_dataset):
    manifest = json.loads((local_dataset / "manifest.json").read_text())
    manifest["data"][0]["image"]["id"] = "../../x"
    (local_dataset / "manifest.json").write_text(json.dumps(manifest))
    resp = api.post(
        "datasets",
        json={"name": "bad", "type": "semantic_segmentation", "format": "monai", "client_url": str(local_dataset)},
    )
    assert resp.status_code == 400, resp.text
    assert "'../../x'" in resp.json()["error_desc"]


def test_batch_output_cannot_escape_the_predictions_folder(tmp_path, monkeypatch):
    from medcloud.jobs.spec import JobSpec
    from medcloud.modelrun import batch

    class Writer:
        def load(self) -> None:
            pass

        def predict(self, image: str, params: dict, out_dir: Path) -> list[Path]:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "pred.txt").write_text(image)
            return [out_dir / "pred.txt"]

    monkeypatch.setattr(batch, "build_predictor", lambda host: Writer())
    images = tmp_path / "inputs"
    (images / "a").mkdir(parents=True)
    (images / "a" / "ct.nii.gz").write_bytes(b"x")
    job_dir = tmp_path / "jobs" / "j"
    spec = JobSpec(
        job_id="j",
        action="batchinfer",
        experiment_id="e",
        network_arch="monai_segmentation",
        bundle_dir="",
        images=[
            {"id": "../../../escape", "dir": "../../../escape", "path": str(images / "a")},
            {"id": "ok", "dir": "ok", "path": str(images / "a")},
        ],
    )
    result = batch.run_batchinfer(spec, job_dir)
    assert result["images"] == 1 and list(result["failed"]) == ["../../../escape"]
    assert not (tmp_path / "escape").exists() and not (job_dir.parent / "escape").exists()
    assert (job_dir / "results" / "predictions" / "ok" / "pred.txt").is_file()


# Finding 17: stop_criteria.


@pytest.mark.parametrize(
    ("stop_criteria", "field"),
    [
        ({"max_rounds": "abc"}, "stop_criteria.max_rounds"),
        ({"max_rounds": 0}, "stop_criteria.max_rounds"),
        ({"max_rounds": 1.5}, "stop_criteria.max_rounds"),
        ({"max_rounds": True}, "stop_criteria.max_rounds"),
        ({"key_metric": "high"}, "stop_criteria.key_metric"),
        ({"key_metric": [0.9]}, "stop_criteria.key_metric"),
        ({"key_metric": True}, "stop_criteria.key_metric"),
        ([1, 2], "stop_criteria"),
    ],
)
def test_bad_stop_criteria_are_400(hostile, stop_criteria, field):
    exp = hostile.plain
    before = job_ids(hostile.api, exp)
    resp = hostile.api.post(
        f"experiments/{exp['id']}/jobs", json={"action": "annotation", "specs": {"stop_criteria": stop_criteria}}
    )
    assert resp.status_code == 400, resp.text
    assert f"`{field}`" in resp.json()["error_desc"]
    assert job_ids(hostile.api, exp) == before


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        ({"stop_criteria": {"max_rounds": "abc"}}, "stop_criteria.max_rounds"),
        ({"stop_criteria": [1]}, "stop_criteria"),
        ({"round_size": "two"}, "round_size"),
        ({"train_spec": "epochs=2"}, "specs.train_spec"),
        ({"train_spec": {"x": "$1"}}, "specs.train_spec.x"),
    ],
)
def test_controller_ends_a_stored_bad_annotation_job_in_error(tmp_path, local_dataset, demo_zips, specs, fragment):
    with make_api(tmp_path / "data") as api:
        dataset_id = create_dataset(api, local_dataset)
        exp = api.post("experiments", json=segmentation_body(dataset_id, demo_zips, name="cl")).json()
        job_id = stored_job(api, exp, "annotation", specs)
        api.ctx.hub.launch_threadsafe(job_id)
        failed = wait_status(api, exp, job_id, {"Error", "Running", "Done"}, timeout=30)
        assert failed["status"] == "Error", failed
        assert fragment in failed["result"]["detailed_status"]["message"]
        wait_for(lambda: not api.ctx.hub.is_running(job_id), timeout=10, what="the controller to stop")
        with api.ctx.db.session() as session:
            assert session.get(Job, job_id).status == "Error"
