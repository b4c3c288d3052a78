"""Hostile bundles against the sandbox on the Ray backend (issue 18): a replica and a Ray job run model code
in the same bubblewrap sandbox as the local backend, and the API gets bytes, never a Python object.

The probe (`probe_bundle.py`) runs in the model host a replica starts on its node, and in the model
process of a train job a Ray worker runs; it also tries the cluster's own services (the GCS and the
dashboard's Jobs API) and the shared folder, where tickets and every experiment's bundle live.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_replicas import (
    driver,  # noqa: F401  (the module's Ray driver, an autouse fixture)
    ray_settings,
    replica_info,
)
from sandbox_scene import read_probe, refused, scene, sees_only_mount_points

ray = pytest.importorskip("ray", reason="Ray is the optional `ray` extra (pip install medcloud[ray])")
from ray import serve  # noqa: E402

pytestmark = [pytest.mark.timeout(900)]


def _cluster_ports(cluster: Any) -> dict[str, int]:
    return {"gcs": int(cluster.address.rsplit(":", 1)[1]), "jobs_api": int(cluster.dashboard_url.rsplit(":", 1)[1])}


@pytest.fixture(scope="module")
def ray_attack(tmp_path_factory, demo_bundles, ray_cluster) -> Iterator[tuple[Any, str, dict, Any, dict]]:
    """A server on the Ray backend, a victim experiment published in the shared folder, the hostile host."""
    from medcloud.demo.synthetic import write_demo_dataset

    tmp = tmp_path_factory.mktemp("ray-attack")
    dataset_root = write_demo_dataset(tmp / "dataset", n_ct=2, n_rgb=0).parent
    with scene(tmp, dataset_root, demo_bundles, **ray_settings(ray_cluster)) as s:
        victim_bundle = sorted(ray_cluster.shared_dir.glob("bundles/*/*/configs/metadata.json"))
        assert victim_bundle, "the victim's bundle is published in the shared folder"
        s.victim_file = victim_bundle[0]
        config = s.config("report", extra_tcp=_cluster_ports(ray_cluster), shared_dir=str(ray_cluster.shared_dir))
        exp_id = s.probe_experiment(demo_bundles["segmentation"], config, realtime=True)
        answer = s.infer(exp_id)
        info = replica_info(exp_id)
        report = read_probe(Path(info["host_folder"]) / "out" / "probe.json")
        yield s, exp_id, report, answer, info


def test_a_replica_runs_the_model_in_the_sandbox_not_in_itself(ray_attack):
    _s, _exp, report, _answer, info = ray_attack
    assert info["sandbox"]["mode"] == "bwrap"
    assert info["host_pid"] and info["host_pid"] != info["pid"]
    assert report["uid"] >= 2_100_000_000 and report["env"] == []


def _sees_only_shared_mount_points(report: dict) -> None:
    """The shared folder inside the sandbox holds only the empty folders bwrap made to mount the model's own
    bundle (or job folders) on: no ticket, no other experiment."""
    listing = report["list_shared"]
    if listing.startswith("ok:"):
        assert set(listing[3:].split(",")) <= {"bundles", "jobs", "experiments"}, listing


def test_model_code_on_ray_reads_no_shared_folder_no_other_bundle_and_no_server_file(ray_attack):
    _s, _exp, report, _answer, _info = ray_attack
    refused(report, "other_experiment", "secret_key", "database", "list_cache")
    sees_only_mount_points(report)
    _sees_only_shared_mount_points(report)


def test_model_code_on_ray_reaches_neither_the_cluster_nor_the_api(ray_attack):
    s, _exp, report, _answer, _info = ray_attack
    refused(report, "tcp_gcs", "tcp_jobs_api", "tcp_api", "tcp_postgres", "tcp_metadata")
    assert s.nothing_connected()


def test_an_output_replaced_by_a_link_on_ray_serves_no_byte_of_the_key(ray_attack):
    s, _exp, _report, answer, _info = ray_attack
    assert answer.status_code == 503, answer.text
    assert s.master_key() not in answer.text


def test_a_replica_answers_bytes_only(ray_attack, tmp_path):
    s, exp_id, _report, _answer, _info = ray_attack
    handle = serve.get_app_handle(f"medcloud-{exp_id}")
    raw = handle.infer.remote("x.nii.gz", [("x.nii.gz", b"not a volume")], {}, 120).result(timeout_s=300)
    assert isinstance(raw, bytes)
    from medcloud import wire

    header, files = wire.unpack_files(raw)
    assert header["ok"] is False and files == []
    assert isinstance(handle.info.remote().result(timeout_s=120), bytes)


def test_a_ray_train_job_cannot_read_its_ticket_and_has_no_network(ray_attack, demo_bundles, ray_cluster):
    s, _exp, _report, _answer, _info = ray_attack
    config = s.config("report", extra_tcp=_cluster_ports(ray_cluster), shared_dir=str(ray_cluster.shared_dir))
    exp_id = s.probe_experiment(demo_bundles["segmentation"], config, realtime=False)
    job_id = s.train(exp_id)
    job_dir = ray_cluster.shared_dir / "jobs" / job_id
    report = json.loads((job_dir / "model" / "probe.json").read_text())
    refused(report, "ticket", "tcp_gcs", "tcp_jobs_api", "tcp_metadata", "secret_key")
    _sees_only_shared_mount_points(report)
    assert not (job_dir / "ticket.json").exists()
    assert s.nothing_connected()
