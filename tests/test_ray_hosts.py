"""Model hosts on Ray Serve, against one real local Ray cluster (tests/ray_cluster.py, 2 logical GPUs).

Real-time inference through the API with `MEDCLOUD_RAY_ADDRESS` set: the same output as the local
backend, two replicas sharing one logical GPU, hot swap reaching every replica (also one started after
the swap), a replica killed mid-request, an API restart that reattaches to the running replica, delete.

A request can be held on its replica: its `bundle_params` carry an expression (the test servers allow
them) that writes the replica's pid and GPU into a marker file and waits until the test creates a release
file. While one request is held there, the next one must go to the other replica (one request per replica).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from builders import create_dataset, create_experiment, manifest_entries
from conftest import make_api
from guides import ORG as GUIDE_ORG
from guides import (
    bundle_server_fixture,  # noqa: F401  (the fixture `bundle_server`: the guide's bundle, served over HTTP)
    create_key,
    guide_cells,
    medcloud_serve,
    requires_guides,
    substitute,
)
from helpers import dice, multipart_parts, nifti_array, nrrd_voxels, wait_for
from ray_replicas import (
    app_name,
    driver,  # noqa: F401  (the module's Ray driver, an autouse fixture)
    ray_settings,
    replica_info,
)
from services import AZURITE_ACCOUNT, upload_folder_to_azure

from medcloud.errors import Unavailable

ray = pytest.importorskip("ray", reason="Ray is the optional `ray` extra (pip install medcloud[ray])")
from ray import serve  # noqa: E402

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medcloud.demo.synthetic import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("ray-dataset") / "dataset", n_ct=2, n_rgb=0).parent


def parent_of(pid: int) -> int:
    """The parent of a process (a model host's: its replica)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def running_replicas(experiment_id: str) -> int:
    app = serve.status().applications.get(app_name(experiment_id))
    return 0 if app is None else sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def infer(api, experiment_id: str, image_id: str, params: dict | None = None):  # type: ignore[no-untyped-def]
    specs = {"image": image_id, **({"bundle_params": params} if params else {})}
    return api.post(f"experiments/{experiment_id}/jobs", json={"action": "inference", "specs": specs})


def segmentation(resp, shape: tuple[int, ...]) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert resp.status_code == 201, resp.text
    parts = multipart_parts(resp)
    assert list(parts) == ["ct_000_seg.nrrd"]
    return nrrd_voxels(parts["ct_000_seg.nrrd"], shape)


class Held:
    """A request held on whichever replica takes it, until `release()`; `pid` is its model host's (the
    replica's `host_pid`) and `gpu` the replica's GPU, once it runs."""

    def __init__(self, api, experiment_id: str, image_id: str, folder: Path) -> None:  # type: ignore[no-untyped-def]
        folder.mkdir(parents=True, exist_ok=True)
        self.marker, self.release_file = folder / "running", folder / "release"
        pathlib = "__import__('pathlib').Path"
        hold = (
            f"$({pathlib}({str(self.marker)!r}).write_text(str(__import__('os').getpid()) + ' ' + "
            "__import__('os').environ.get('CUDA_VISIBLE_DEVICES', '')), "
            f"any({pathlib}({str(self.release_file)!r}).exists() or __import__('time').sleep(0.05) "
            "for _ in range(6000)), 0)[-1]"
        )
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(
            target=lambda: self.result.update(resp=infer(api, experiment_id, image_id, {"hold": hold}))
        )
        self.thread.start()
        text = wait_for(lambda: self.marker.exists() and self.marker.read_text(), timeout=120, what="held request")
        pid, _, gpu = str(text).partition(" ")
        self.pid, self.gpu = int(pid), gpu

    def release(self):  # type: ignore[no-untyped-def]
        self.release_file.touch()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()
        return self.result["resp"]


def broken_bundle(bundle: Path, tmp_path: Path) -> Path:
    """The demo segmentation bundle with a checkpoint that is not one (zip)."""
    import shutil

    from medcloud.demo.bundles import pack_bundle

    folder = tmp_path / "broken" / "broken_segmentation"
    shutil.copytree(bundle, folder)
    (folder / "models" / "model.pt").write_bytes(b"not a checkpoint")
    return pack_bundle(folder, tmp_path / "broken-zip", "zip")


def untimed(nrrd: bytes) -> bytes:
    """An NRRD file without pynrrd's "# on <time>" comment: everything else must match byte for byte."""
    return re.sub(rb"\n# on [^\n]*\(GMT\)\.\n", b"\n", nrrd, count=1)


def zero_weights(bundle: Path, out: Path) -> Path:
    """The bundle's network with every parameter zeroed: it segments nothing at all."""
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, out)
    return out


def test_ray_replica_matches_the_local_host_and_an_api_restart_reattaches(
    ray_cluster,
    dataset,
    demo_zips,
    demo_bundles,
    tmp_path,
):
    from medcloud.experiments import realtime
    from medcloud.experiments.orm import Experiment
    from medcloud.inference.hosts import HostManager

    data_dir = tmp_path / "data"
    entry = manifest_entries(dataset)[0]
    truth = nifti_array(dataset / entry["label"]["path"][0])
    with make_api(data_dir, **ray_settings(ray_cluster)) as api:
        dataset_id = create_dataset(api, dataset)
        apps_before = set(serve.status().applications)
        shared_before = set((ray_cluster.shared_dir / "bundles").glob("*"))
        refused = api.post(
            "experiments",
            json={
                "name": "broken",
                "network_arch": "monai_custom",
                "train_datasets": [dataset_id],
                "realtime_infer": True,
                "bundle_url": f"file://{broken_bundle(demo_bundles['segmentation'], tmp_path)}",
            },
        )
        assert refused.status_code == 400, refused.text
        assert "the model could not be loaded" in refused.json()["error_desc"]
        # the model's own error, as the local backend words it (MONAI's, around the unreadable checkpoint)
        assert "RuntimeError: Failed to evaluate ConfigExpression" in refused.json()["error_desc"]
        assert set(serve.status().applications) == apps_before  # nothing left deployed
        assert set((ray_cluster.shared_dir / "bundles").glob("*")) == shared_before  # its copy removed

        exp = create_experiment(api, dataset_id, demo_zips["segmentation"])
        eid = exp["id"]
        assert running_replicas(eid) == 1
        first = infer(api, eid, entry["image"]["id"])
        seg = segmentation(first, truth.shape)
        assert dice(seg, truth) > 0.8
        # The local backend, same bundle and image: the very same bytes.
        with api.ctx.db.session() as session:
            spec = realtime.host_spec(session.get(Experiment, eid), api.ctx.settings)
        local = HostManager(api.ctx.settings)

        async def run_locally() -> bytes:
            try:
                outputs = await local.infer(
                    spec, image=str(dataset / entry["image"]["path"][0]), params={}, timeout=120
                )
                try:
                    return dict((name, f.read()) for name, f in outputs.files)["ct_000_seg.nrrd"]
                finally:
                    outputs.close()
            finally:
                await local.stop_all()

        ray_bytes = multipart_parts(first)["ct_000_seg.nrrd"]
        assert untimed(asyncio.run(run_locally())) == untimed(ray_bytes) != ray_bytes
        before = replica_info(eid)
        assert before["medcloud_env"] == []  # the API's MEDCLOUD_* settings and secrets stay on the API
        assert Path(before["spec"]["bundle_dir"]).is_relative_to(ray_cluster.shared_dir)
    # The API is gone; the replica is the cluster's and still runs. A new driver, as a new process would be.
    assert running_replicas(eid) == 1
    ray.shutdown()
    with make_api(data_dir, **ray_settings(ray_cluster)) as api:
        with api.ctx.db.session() as session:
            spec = realtime.host_spec(session.get(Experiment, eid), api.ctx.settings)
        api.client.portal.call(api.ctx.hosts.reconcile, {eid: spec})
        again = infer(api, eid, entry["image"]["id"])
        assert untimed(multipart_parts(again)["ct_000_seg.nrrd"]) == untimed(ray_bytes)
        after = replica_info(eid)
        assert (after["pid"], after["actor_id"]) == (before["pid"], before["actor_id"])  # reattached, not reloaded
        assert api.delete(f"experiments/{eid}").status_code == 200
        assert app_name(eid) not in serve.status().applications
        assert not (ray_cluster.shared_dir / "bundles" / eid).exists()


def test_two_replicas_share_a_gpu_hot_swap_reaches_every_replica_and_a_crash_is_a_503(
    ray_cluster,
    dataset,
    demo_zips,
    demo_bundles,
    tmp_path,
):
    from medcloud.experiments import realtime
    from medcloud.experiments.orm import Experiment

    entry = manifest_entries(dataset)[0]
    image_id = entry["image"]["id"]
    truth = nifti_array(dataset / entry["label"]["path"][0])
    # The held requests' expressions signal through files of this test's folder, which sandboxed model code
    # cannot see: this test is about Serve's routing and hot swap, so its model code runs unsandboxed.
    with make_api(tmp_path / "data", **ray_settings(ray_cluster, ray_max_replicas=2, model_sandbox="unsafe")) as api:
        dataset_id = create_dataset(api, dataset)
        exp = create_experiment(api, dataset_id, demo_zips["segmentation"], model_params={"replicas": 2})
        eid = exp["id"]
        assert running_replicas(eid) == 2

        # Placement: while one request holds its replica, the other replica answers; both on one logical GPU.
        held = Held(api, eid, image_id, tmp_path / "hold-1")
        other = replica_info(eid)
        assert other["host_pid"] != held.pid
        assert other["gpu_ids"] == [held.gpu] and held.gpu in ("0", "1")
        assert dice(segmentation(held.release(), truth.shape), truth) > 0.8
        replicas = {held.pid, other["host_pid"]}

        # Hot swap: both replicas answer with the new (all-zero) weights, and neither restarted.
        new_weights = zero_weights(demo_bundles["segmentation"], tmp_path / "zero.pt")
        api.client.portal.call(api.ctx.hosts.swap, eid, new_weights)
        held = Held(api, eid, image_id, tmp_path / "hold-2")
        assert not segmentation(infer(api, eid, image_id), truth.shape).any()  # the other replica
        assert not segmentation(held.release(), truth.shape).any()
        assert held.pid in replicas and replica_info(eid)["host_pid"] in replicas

        # A plain redeploy (start again, same bundle) keeps the swapped weights, in place.
        with api.ctx.db.session() as session:
            spec = realtime.host_spec(session.get(Experiment, eid), api.ctx.settings)
        api.client.portal.call(api.ctx.hosts.start, spec, 300)
        held = Held(api, eid, image_id, tmp_path / "hold-redeploy")
        assert not segmentation(infer(api, eid, image_id), truth.shape).any()
        assert not segmentation(held.release(), truth.shape).any()
        assert held.pid in replicas and replica_info(eid)["host_pid"] in replicas

        # Weights that do not fit the network: the swap fails and both replicas keep the weights they had.
        bogus = tmp_path / "bogus.pt"
        torch.save({"bogus": torch.zeros(1)}, bogus)
        with pytest.raises(Unavailable, match="swapping weights failed"):
            api.client.portal.call(api.ctx.hosts.swap, eid, bogus)
        held = Held(api, eid, image_id, tmp_path / "hold-bogus")
        assert not segmentation(infer(api, eid, image_id), truth.shape).any()
        assert not segmentation(held.release(), truth.shape).any()
        assert held.pid in replicas

        # A replica dies mid-request: that request is a 503; the next one is answered by the other replica.
        held = Held(api, eid, image_id, tmp_path / "hold-3")
        os.kill(parent_of(held.pid), signal.SIGKILL)  # the replica holding the request (its host's parent)
        crashed = held.release()
        assert crashed.status_code == 503, crashed.text
        assert "the model replica failed while answering" in crashed.json()["error_desc"]
        assert not segmentation(infer(api, eid, image_id), truth.shape).any()

        # Serve replaces the dead replica; the new one gets the swapped weights too.
        wait_for(lambda: running_replicas(eid) == 2, timeout=300, what="Serve to replace the dead replica")
        dead = held.pid
        held = Held(api, eid, image_id, tmp_path / "hold-4")
        now = {held.pid, replica_info(eid)["host_pid"]}
        assert len(now) == 2 and dead not in now and len(now - replicas) == 1  # the survivor and a newcomer
        assert not segmentation(infer(api, eid, image_id), truth.shape).any()
        assert not segmentation(held.release(), truth.shape).any()
        assert api.delete(f"experiments/{eid}").status_code == 200
        assert app_name(eid) not in serve.status().applications


def test_a_ray_replica_serves_in_a_checked_faster_mode(ray_cluster, dataset, demo_zips, tmp_path):
    """The replica builds the faster network, answers the check exactly, then serves in bf16 (or openvino);
    its report travels back with the answer to the experiment."""
    from medcloud.inference.accel.modes import unavailable_reason

    mode = "bf16" if unavailable_reason("bf16", "cpu") is None else "openvino"
    if unavailable_reason(mode, "cpu"):
        pytest.skip(f"no faster mode on this CPU: {unavailable_reason(mode, 'cpu')}")
    entry = manifest_entries(dataset)[0]
    truth = nifti_array(dataset / entry["label"]["path"][0])
    with make_api(tmp_path / "data", **ray_settings(ray_cluster)) as api:
        dataset_id = create_dataset(api, dataset)
        exp = create_experiment(api, dataset_id, demo_zips["segmentation"], model_params={"inference_mode": mode})
        checked = segmentation(infer(api, exp["id"], entry["image"]["id"]), truth.shape)
        shown = api.get(f"experiments/{exp['id']}").json()["inference"]
        assert shown["mode"] == mode and shown["check"]["passed"] is True and shown["check"]["min_dice"] >= 0.99
        served = segmentation(infer(api, exp["id"], entry["image"]["id"]), truth.shape)
        assert dice(served, checked) >= 0.99 and dice(served, truth) > 0.8
        assert api.delete(f"experiments/{exp['id']}").status_code == 200


@requires_guides
def test_guide_000_runs_as_written_against_medcloud_serve_on_ray(
    ray_cluster,
    azurite,
    local_dataset,
    bundle_server,
    tmp_path,
    monkeypatch,
):
    """Guide 000 (real-time inference on a custom bundle) end to end, its model a Serve application."""
    upload_folder_to_azure(azurite, local_dataset, "guide000ray", "data")
    entries = json.loads((local_dataset / "manifest.json").read_text())["data"]
    png = next(e for e in entries if e["image"]["path"][0].endswith(".png"))
    data_dir = tmp_path / "server"
    monkeypatch.setenv("MONAI_API_KEY", create_key(data_dir, GUIDE_ORG, "guide-user"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the guide writes the predictions into the current folder
    env = {
        "MEDCLOUD_RAY_ADDRESS": ray_cluster.address,
        "MEDCLOUD_RAY_SHARED_DIR": str(ray_cluster.shared_dir),
        "MEDCLOUD_RAY_CPUS_PER_REPLICA": "0.25",
    }
    seen: dict[str, Any] = {}

    def watch_experiment(namespace: dict[str, Any]) -> None:
        """After the guide's cell that creates the experiment: its model runs as a Serve application."""
        if "experiment_id" in namespace and "apps" not in seen:
            if not ray.is_initialized():
                ray.init(address=ray_cluster.address, logging_level="WARNING", log_to_driver=False)
            seen["apps"] = set(serve.status().applications)
            seen["experiment_id"] = namespace["experiment_id"]

    with medcloud_serve(data_dir, env=env) as server:
        replacements = {
            "host_url": server.url,
            "access_id": AZURITE_ACCOUNT,
            "access_secret": azurite.key,
            "container_url": f"{azurite.endpoint}/guide000ray/data",
            "inference_image_id": png["image"]["id"],
            "bundle_url": bundle_server,
        }
        namespace: dict[str, Any] = {}
        cells = guide_cells("000")
        assert len(cells) == 10
        for cell in cells:
            exec(compile(substitute(cell, replacements), "guide-000", "exec"), namespace)  # noqa: S102
            watch_experiment(namespace)
        assert app_name(seen["experiment_id"]) in seen["apps"]
        assert app_name(seen["experiment_id"]) not in serve.status().applications  # turned off, then deleted
    with open(work / "realtime_inference_predictions.csv") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1
    assert rows[0][0].endswith(png["image"]["path"][0].split("/")[-1])
    scores = [float(v) for v in rows[0][1:]]
    assert len(scores) == 2 and scores.index(max(scores)) == 0  # frame_000 is class 0 ("in body")
    assert namespace["response"].status_code == 200  # the last cell deleted the dataset
