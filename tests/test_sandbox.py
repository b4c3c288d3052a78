"""Model code runs sandboxed: no server secrets in its environment, no master key, database or other
experiment's files, and nothing it plants is read back by the server with the server's authority."""

from __future__ import annotations

import json
import os
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
from conftest import make_api
from helpers import wait_for
from probe_bundle import make_probe_bundle
from test_realtime_inference import create_dataset, create_experiment

from medcloud.demo.bundles import pack_bundle


def _root_with_group() -> bool:
    import grp

    try:
        grp.getgrnam("medcloud-model")
    except KeyError:
        return False
    return os.geteuid() == 0


ROOT_WITH_GROUP = _root_with_group()
SECRET = "s" * 40


def _probe_report(path: Path) -> dict:
    return json.loads(wait_for(lambda: path.exists() and path.read_text(), timeout=240, what=str(path)))


@pytest.fixture
def hostile(tmp_path, local_dataset, demo_bundles, monkeypatch):
    """A server with secrets in its environment, a victim experiment, and the probe bundle of another user."""
    # The master key is in data/secret.key (what a bundle would look for); other secrets are in the environment.
    monkeypatch.setenv("MEDCLOUD_DATABASE_PASSWORD", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-of-the-server")
    mode = "uid" if ROOT_WITH_GROUP else "auto"
    with make_api(tmp_path / "data", model_sandbox=mode, bundle_allow_local_paths=True) as api:
        dataset_id = create_dataset(api, local_dataset)
        victim = create_experiment(api, dataset_id, pack_bundle(demo_bundles["segmentation"], tmp_path, "zip"))
        victim_file = tmp_path / "data" / "experiments" / victim["id"] / "bundle" / "configs" / "metadata.json"
        assert victim_file.exists()
        probe = make_probe_bundle(demo_bundles["segmentation"], tmp_path / "probe", victim_file)
        dataset_bob = create_dataset(api, local_dataset, user="bob")
        api.bob_dataset = dataset_bob  # type: ignore[attr-defined]
        yield api, probe, tmp_path / "data"


def _probe_experiment(api, probe: Path, *, realtime: bool) -> str:
    """Bob's experiment on the hostile bundle: its code runs when the host loads or the job trains."""
    body = {
        "name": "probe",
        "network_arch": "monai_custom",
        "train_datasets": [api.bob_dataset],
        "realtime_infer": realtime,
        "bundle_url": f"file://{pack_bundle(probe, probe.parent, 'zip')}",
    }
    resp = api.post("experiments", user="bob", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _assert_contained(report: dict, data_dir: Path) -> None:
    assert report["env"] == [], report["env"]
    assert not report["secret_key"].startswith("ok"), report
    assert not report["database"].startswith("ok"), report
    assert not report["uids"].startswith("ok"), report
    assert not report["other_experiment"].startswith("ok"), report
    assert not report["parent_environ"].startswith("ok"), report
    assert not report["link_secret"].startswith("ok"), report
    assert not report["list_data"].startswith("ok"), report
    assert not report["list_experiments"].startswith("ok"), report
    assert not report["list_cache"].startswith("ok"), report
    assert report["uid"] != 0


@pytest.mark.skipif(not ROOT_WITH_GROUP, reason="the uid sandbox needs a root server (and the set-up's group)")
def test_model_host_code_reaches_no_secret_and_no_other_experiment(hostile):
    api, probe, data_dir = hostile
    exp_id = _probe_experiment(api, probe, realtime=True)
    report = _probe_report(data_dir / "hosts" / exp_id / "probe.json")
    _assert_contained(report, data_dir)


@pytest.mark.skipif(not ROOT_WITH_GROUP, reason="the uid sandbox needs a root server (and the set-up's group)")
def test_train_job_code_reaches_no_secret_and_its_planted_links_are_not_followed(hostile):
    api, probe, data_dir = hostile
    exp_id = _probe_experiment(api, probe, realtime=False)
    resp = api.post(
        f"experiments/{exp_id}/jobs", user="bob", json={"action": "train", "specs": {"train#trainer#max_epochs": 1}}
    )
    assert resp.status_code == 201, resp.text
    job_id = resp.json()  # a bare JSON string, as the contract says
    report = _probe_report(data_dir / "jobs" / job_id / "probe.json")
    _assert_contained(report, data_dir)
    wait_for(
        lambda: api.get(f"experiments/{exp_id}/jobs/{job_id}", user="bob").json()["status"] in ("Done", "Error"),
        timeout=300,
        what="the train job to end",
    )
    # The probe left results/leak.txt and logs.txt as links to the master key: neither is served.
    master = (data_dir / "secret.key").read_text().strip()
    assert len(master) >= 32
    logs = api.get(f"experiments/{exp_id}/jobs/{job_id}/logs", user="bob")
    assert master not in logs.text
    download = api.get(f"experiments/{exp_id}/jobs/{job_id}:download", user="bob")
    assert download.status_code == 200, download.text
    with tarfile.open(fileobj=BytesIO(download.content)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                assert master.encode() not in tar.extractfile(member).read(), member.name


def test_model_environment_is_an_allow_list(tmp_path, monkeypatch):
    from medcloud.config import Settings
    from medcloud.sandbox import Sandbox

    monkeypatch.setenv("MEDCLOUD_SECRET_KEY", SECRET)
    monkeypatch.setenv("AZURE_STORAGE_KEY", "k")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    box = Sandbox(Settings(data_dir=tmp_path / "data", model_sandbox="off").resolved())
    env = box.env(home=tmp_path / "home")
    assert "MEDCLOUD_SECRET_KEY" not in env and "AZURE_STORAGE_KEY" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["HOME"] == str(tmp_path / "home")


@pytest.mark.skipif(not ROOT_WITH_GROUP, reason="the uid sandbox needs a root server (and the set-up's group)")
def test_each_experiment_gets_its_own_uid_and_private_folders(tmp_path):
    from medcloud.config import Settings
    from medcloud.sandbox import Sandbox

    data = tmp_path / "data"
    data.mkdir()
    from conftest import sandbox_reachable

    sandbox_reachable(data)
    box = Sandbox(Settings(data_dir=data, model_sandbox="uid").resolved())
    a, b = box.identity("a"), box.identity("b")
    assert a.uid != b.uid and a.uid and a.uid > 1000 and box.identity("a") == a
    folder = box.prepare(data / "experiments" / "a", experiment_id="a")
    assert folder.stat().st_uid == a.uid and folder.stat().st_mode & 0o777 == 0o700
    assert data.stat().st_mode & 0o777 == 0o710 and (data / "cache").stat().st_mode & 0o777 == 0o700


def test_staged_inputs_survive_cache_eviction(tmp_path, local_dataset, demo_zips):
    """Finding 14: a job's inputs are links in its own folder, so the cache may evict its copies mid-run."""
    from medcloud.jobs.orm import Job
    from medcloud.learning.staging import WorkerContext, stage_job
    from medcloud.learning.tickets import build_ticket

    with make_api(tmp_path / "data", bundle_allow_local_paths=True) as api:
        dataset_id = create_dataset(api, local_dataset)
        body = {
            "name": "stage",
            "network_arch": "monai_segmentation",
            "train_datasets": [dataset_id],
            "eval_dataset": dataset_id,
            "bundle_url": f"file://{demo_zips['segmentation']}",
        }
        resp = api.post("experiments", json=body)
        assert resp.status_code == 201, resp.text
        job = Job(
            id="staging-test", action="train", specs={}, experiment_id=resp.json()["id"], org="acme", user_id="alice"
        )
        job_dir = tmp_path / "data" / "jobs" / "staging-test"
        with api.ctx.db.session() as session:
            ticket = build_ticket(api.ctx, session, job, job_dir_of=api.ctx.jobs.job_dir, cache_dir=api.ctx.cache.root)
        spec = stage_job(WorkerContext.from_ticket(ticket, job_dir), ticket, job_dir)
        before = {item["image"]: Path(item["image"]).read_bytes() for item in spec.train_items + spec.val_items}
        assert before and all(Path(p).is_relative_to(tmp_path / "data" / "jobs") for p in before)
        api.ctx.cache.drop_dataset(dataset_id)
        api.ctx.cache.sweep()
        assert not any((tmp_path / "data" / "cache").glob("*/*/files"))  # the cache's copies are gone
        for path, content in before.items():
            assert Path(path).read_bytes() == content
        for item in spec.train_items:
            assert Path(item["label"]).exists()
