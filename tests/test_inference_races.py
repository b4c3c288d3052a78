"""DELETE and PATCH while an inference is in flight: the answer is whole or a clear 4xx, and no host is left."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from builders import create_dataset, create_experiment, manifest_entries
from helpers import csv_rows, multipart_parts, wait_for

SLEEP_S = 3


@pytest.fixture(scope="module")
def slow_inference_bundle(demo_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo classification bundle whose every request sleeps `SLEEP_S` seconds in preprocessing (zip)."""
    from medcloud.demo.bundles import pack_bundle

    folder = tmp_path_factory.mktemp("slowinfer") / "slow_infer"
    shutil.copytree(demo_bundles["classification"], folder)
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    sleep = {"_target_": "Lambda", "func": f"$lambda d: (__import__('time').sleep({SLEEP_S}), d)[1]"}
    config["preprocessing"]["transforms"].append(sleep)
    path.write_text(json.dumps(config, indent=1))
    return pack_bundle(folder, tmp_path_factory.mktemp("slowinferzip"), "zip")


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _in_flight(api, exp_id: str, image_id: str) -> tuple[threading.Thread, dict]:
    """Start an inference in a thread; return once the host holds it (its request folder exists)."""
    answer: dict = {}
    requests = api.ctx.settings.data_dir / "hosts" / exp_id / "in"  # each request's input is staged here

    def call() -> None:
        answer["resp"] = api.post(
            f"experiments/{exp_id}/jobs", json={"action": "inference", "specs": {"image": image_id}}
        )

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: requests.exists() and any(requests.iterdir()), timeout=60, what="the request to reach the host")
    return thread, answer


def _png(local_dataset) -> str:
    return next(e for e in manifest_entries(local_dataset) if e["image"]["path"][0].endswith(".png"))["image"]["id"]


def test_delete_during_an_inference_answers_it_refuses_the_queued_one_and_leaves_no_host(
    api, local_dataset, slow_inference_bundle
):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, slow_inference_bundle)
    pid = api.ctx.hosts.host(exp["id"]).pid
    image = _png(local_dataset)
    first, first_answer = _in_flight(api, exp["id"], image)
    deleted: dict = {}
    deleter = threading.Thread(target=lambda: deleted.update(resp=api.delete(f"experiments/{exp['id']}")))
    deleter.start()
    wait_for(lambda: api.ctx.hosts.retired(exp["id"]), timeout=30, what="the delete to stop the host")
    # A request that read the row before the delete's commit, waiting for the host behind the delete.
    second = api.post(f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": image}})
    first.join(60)
    deleter.join(60)
    resp = first_answer["resp"]
    assert resp.status_code == 201, resp.text
    rows = csv_rows(next(iter(multipart_parts(resp).values())))
    assert len(rows) == 1 and len(rows[0]) == 3  # a whole answer: the image and two class scores
    assert deleted["resp"].status_code == 200, deleted["resp"].text
    assert second.status_code in (400, 404), second.text  # never a new host for the deleted experiment
    assert "error_desc" in second.json()
    assert api.ctx.hosts.host(exp["id"]) is None
    wait_for(lambda: not _alive(pid), timeout=30, what="the host process to end")
    assert not (api.ctx.settings.data_dir / "hosts" / exp["id"]).exists()
    assert api.get(f"experiments/{exp['id']}").status_code == 404


def test_turning_realtime_off_during_an_inference_answers_it_and_stops_the_host(
    api, local_dataset, slow_inference_bundle
):
    dataset_id = create_dataset(api, local_dataset)
    exp = create_experiment(api, dataset_id, slow_inference_bundle)
    pid = api.ctx.hosts.host(exp["id"]).pid
    image = _png(local_dataset)
    first, first_answer = _in_flight(api, exp["id"], image)
    patched = api.patch(f"experiments/{exp['id']}", json={"realtime_infer": False})
    first.join(60)
    assert patched.status_code == 200 and patched.json()["realtime_infer"] is False, patched.text
    assert first_answer["resp"].status_code == 201, first_answer["resp"].text
    wait_for(lambda: not _alive(pid), timeout=30, what="the host process to end")
    off = api.post(f"experiments/{exp['id']}/jobs", json={"action": "inference", "specs": {"image": image}})
    assert off.status_code == 400 and "real-time inference is off" in off.json()["error_desc"]
    assert api.ctx.hosts.host(exp["id"]) is None
