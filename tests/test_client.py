"""`medcloud.client` against a real `medcloud serve`: guide 000, NRRD geometry, a train job watched to Done,
logs, pagination, a wrong key, an unreachable host, 503 and 401 answers from a real proxy, profiles."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from client_helpers import ORG, Faults, fault_proxy

from medcloud.client import (
    Client,
    ClientError,
    ConnectionFailed,
    NotFound,
    Unauthorized,
    Unavailable,
    prompts,
    read_nrrd,
)
from medcloud.client.profiles import Profile, save_profile
from medcloud.devserver import create_key, free_port, medcloud_serve


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real server for the module, and a key of user `client-user` in the default org."""
    data_dir = tmp_path_factory.mktemp("client-server")
    key = create_key(data_dir, ORG, "client-user")
    with medcloud_serve(data_dir) as server:
        yield server, key


@pytest.fixture
def client(served, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDCLOUD_CONFIG_DIR", str(tmp_path / "config"))  # never the user's own profiles
    for var in ("MEDCLOUD_API_KEY", "MONAI_API_KEY", "MEDCLOUD_HOST", "MEDCLOUD_ORG", "MEDCLOUD_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    server, key = served
    with Client(server.url, key) as made:
        yield made


def manifest(root: Path) -> list[dict]:
    return json.loads((root / "manifest.json").read_text())["data"]


def test_guide_000_from_the_client_writes_the_csv(client, local_dataset, demo_zips, tmp_path):
    assert client.org == ORG  # the hosted service's default org, as the guide's base_url
    ds = client.create_dataset("MONAI_CLOUD", str(local_dataset), description="Object storage dataset")
    assert ds.client_url == str(local_dataset) and ds.type == "semantic_segmentation"
    exp = client.create_experiment(
        "my_inbody_clf", "monai_custom", train_datasets=[ds], eval_dataset=ds, realtime_infer=True,
        bundle_url=str(demo_zips["classification"]),
        model_params={"override": {"output_filename": "realtime_inference_predictions.csv"}},
    )  # fmt: skip
    assert exp.realtime_infer and exp.train_datasets == [ds.id]
    png = next(e for e in manifest(local_dataset) if e["image"]["path"][0].endswith("frame_000.png"))
    client.cache_image(ds, png["image"]["id"])
    written = client.infer(exp, png["image"]["id"], out_dir=tmp_path / "out")
    assert list(written) == ["realtime_inference_predictions.csv"]
    path = written["realtime_inference_predictions.csv"]
    assert path == tmp_path / "out" / "realtime_inference_predictions.csv"
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert len(rows) == 1 and rows[0][0].endswith("frame_000.png")
    scores = [float(v) for v in rows[0][1:]]
    assert len(scores) == 2 and scores.index(max(scores)) == 0  # frame_000 is class 0 ("in body")
    in_memory = client.infer(exp, png["image"]["id"])
    assert list(in_memory) == ["realtime_inference_predictions.csv"]  # bytes when no out_dir
    again = next(csv.reader(io.StringIO(in_memory["realtime_inference_predictions.csv"].decode())))
    assert again[1:] == rows[0][1:]  # the same scores (the first column is the request's own copy of the image)
    assert client.update_experiment(exp, realtime_infer=False).realtime_infer is False
    client.delete_experiment(exp)
    client.delete_dataset(ds)
    with pytest.raises(NotFound):
        client.dataset(ds.id)


def test_segmentation_output_reads_as_an_array_with_the_image_geometry(client, local_dataset, demo_zips):
    ds = client.create_dataset("seg", str(local_dataset))
    exp = client.create_experiment(
        "rt-seg", "monai_custom", train_datasets=[ds], eval_dataset=ds, realtime_infer=True,
        bundle_url=str(demo_zips["segmentation"]),
    )  # fmt: skip
    assert exp.labels == {"1": "spleen"}
    entry = manifest(local_dataset)[0]
    outputs = client.infer(exp, entry["image"]["id"], dataset_id=ds.id)
    seg = read_nrrd(outputs["ct_000_seg.nrrd"])
    image = nib.load(str(local_dataset / entry["image"]["path"][0]))
    truth = np.asarray(nib.load(str(local_dataset / entry["label"]["path"][0])).dataobj)
    assert seg.array.shape == image.shape and seg.array.dtype == np.uint8
    assert np.allclose(seg.affine, image.affine, atol=1e-3)
    overlap = np.logical_and(seg.array > 0, truth > 0).sum() * 2 / ((seg.array > 0).sum() + (truth > 0).sum())
    assert overlap > 0.8
    client.delete_experiment(exp)


def test_train_job_is_watched_to_done_with_progress_lines_and_its_log_followed(
    client, local_dataset, demo_zips, tmp_path
):
    ds = client.create_dataset("train", str(local_dataset))
    exp = client.create_experiment(
        "train", "monai_segmentation", train_datasets=[ds], eval_dataset=ds, bundle_url=str(demo_zips["segmentation"])
    )
    client.poll_s = 0.5
    job = client.train(exp, epochs=2, val_interval=1, finetune=True)
    assert job.action == "train" and job.experiment_id == exp.id
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(client.logs(job, follow=True)))
    follower.start()
    out = io.StringIO()
    done = client.watch(job, out=out, tty=False, timeout=300)
    follower.join(timeout=60)
    assert not follower.is_alive()
    assert done.status == "Done", done.result
    lines = out.getvalue().splitlines()
    assert all(line.startswith(f"job {job.id} ") for line in lines)
    assert any(line.startswith(f"job {job.id} Running  epoch ") and "/2" in line for line in lines)
    assert lines[-1].startswith(f"job {job.id} Done  epoch ") and "key_metric 0." in lines[-1]
    assert done.progress.max_epoch == 2 and done.progress.key_metric > 0.8
    assert any("Epoch" in line for line in followed)
    assert followed == list(client.logs(job))  # following saw the whole log, in order, nothing twice
    assert [j.id for j in client.jobs(exp)] == [job.id]
    archive = client.download(job, tmp_path / "results")
    assert archive == tmp_path / "results" / f"{job.id}.tar.gz"
    with tarfile.open(archive) as tar:
        assert f"{job.id}/results/models/model.pt" in tar.getnames()
    assert "already ended" in client.cancel(job)
    with pytest.raises(NotFound):
        client.download("1b4e28ba-2fa1-11d2-883f-0016d3cca427", tmp_path / "none.tar.gz", experiment=exp)
    assert not (tmp_path / "none.tar.gz").exists() and not list(tmp_path.glob(".*part"))  # nothing half-written


def test_tty_progress_is_one_redrawn_bar():
    from medcloud.client.display import JobDisplay
    from medcloud.client.types import Job

    out = io.StringIO()
    display = JobDisplay(out, tty=True)
    base = {"id": "0" * 36, "action": "train", "experiment_id": "e"}
    display.update(Job.from_api({**base, "status": "Running", "result": {"epoch": 1, "max_epoch": 4, "eta": 65}}))
    display.update(Job.from_api({**base, "status": "Done", "result": {"epoch": 4, "max_epoch": 4, "key_metric": 0.9}}))
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "[######..................] Running  epoch 1/4  ETA 1:05" in text
    assert "[########################] Done  epoch 4/4  key_metric 0.9000" in text


def test_lists_iterate_over_every_page(client, local_dataset, monkeypatch):
    monkeypatch.setattr("medcloud.client.client.PAGE_SIZE", 2)
    made = {client.create_dataset(f"page-{i}", str(local_dataset)).id for i in range(5)}
    listed = [d.id for d in client.datasets()]
    assert made <= set(listed) and len(listed) == len(set(listed))
    assert len(listed) >= 5  # three pages of two at least
    by_name = [d.name for d in client.datasets(name="page-3")]
    assert by_name == ["page-3"]


def test_a_wrong_key_is_a_clear_unauthorized_without_the_key(served):
    server, _ = served
    wrong = "nvapi-this-is-not-a-key-0123456789"
    with Client(server.url, wrong) as bad, pytest.raises(Unauthorized) as caught:
        list(bad.datasets())
    assert caught.value.status == 401
    assert str(caught.value).startswith(f"Login to {server.url} failed: ")
    assert wrong not in str(caught.value) and wrong not in repr(bad) and wrong not in repr(bad.transport)


def test_an_unreachable_host_is_retried_with_backoff_then_a_clear_error():
    host = f"http://127.0.0.1:{free_port()}"
    waits: list[float] = []
    with Client(host, "any-key", retries=3, backoff_s=0.01) as unreachable:
        unreachable.transport.sleep = waits.append
        with pytest.raises(ConnectionFailed) as caught:
            unreachable.experiment("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    assert waits == [0.01, 0.02, 0.04]
    assert f"Cannot reach {host}" in caught.value.message and "after 4 attempt(s)" in caught.value.message


def test_503_is_retried_honouring_retry_after_and_4xx_is_not(client, served):
    server, key = served
    faults = Faults(suffix="/datasets", status=503, count=2, retry_after="0.05")
    with fault_proxy(server.url, faults) as proxy, Client(proxy, key, retries=3, backoff_s=5) as proxied:
        waits: list[float] = []
        proxied.transport.sleep = lambda s: waits.append(s)
        assert isinstance(list(proxied.datasets()), list)
        assert waits == [0.05, 0.05]  # Retry-After, not the 5 s backoff
        assert faults.seen.count(f"GET /api/v1/orgs/{ORG}/datasets") == 3
        faults.count, faults.retry_after = 10, None
        with pytest.raises(Unavailable) as caught:
            list(proxied.datasets())
        assert waits[2:] == [5, 10, 20] and "still 503 after 4 attempts" in caught.value.message
        faults.count, faults.status = 1, 400
        before = len(faults.seen)
        with pytest.raises(Exception) as bad:
            list(proxied.datasets())
        assert "injected by the test proxy" in str(bad.value) and len(faults.seen) == before + 1


def test_a_401_on_a_resource_logs_in_again_once(served):
    server, key = served
    faults = Faults(suffix="/workspaces", status=401, count=1, retry_after=None)
    with fault_proxy(server.url, faults) as proxy, Client(proxy, key) as proxied:
        assert isinstance(list(proxied.workspaces()), list)
        assert faults.seen.count("POST /api/v1/login") == 2
        faults.count = 2
        with pytest.raises(Unauthorized):
            list(proxied.workspaces())
        assert faults.seen.count("POST /api/v1/login") == 3  # once more, not in a loop


def test_profiles_are_0600_named_and_resolved_in_order(served, monkeypatch, tmp_path):
    server, key = served
    monkeypatch.setenv("MEDCLOUD_CONFIG_DIR", str(tmp_path / "cfg"))
    for var in ("MEDCLOUD_API_KEY", "MONAI_API_KEY", "MEDCLOUD_HOST", "MEDCLOUD_ORG", "MEDCLOUD_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ClientError, match="No API key"):
        Client(server.url)
    path = save_profile(Profile(host=server.url, org=ORG, api_key=key), "local")
    save_profile(Profile(host="http://127.0.0.1:1", org="other", api_key="wrong"), "staging", make_default=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert stored["default"] == "local" and set(stored["profiles"]) == {"local", "staging"}
    with Client() as from_profile:  # the default profile
        assert from_profile.host == server.url and from_profile.login()
    monkeypatch.setenv("MONAI_API_KEY", "from-the-notebook")  # the environment beats the default profile...
    assert Client().transport.settings.api_key == "from-the-notebook"
    staging = Client(profile="staging")  # ...but not a profile named explicitly
    assert (staging.host, staging.org, staging.transport.settings.api_key) == ("http://127.0.0.1:1", "other", "wrong")
    assert "wrong" not in repr(staging.transport.settings)
    with pytest.raises(ClientError, match="No profile named 'nope'"):
        Client(profile="nope")


def test_prompt_helpers_check_shapes_before_the_request():
    assert prompts.vista3d(label_prompt=[3], points=[[1, 2, 3]]) == {
        "label_prompt": [3], "points": [[1, 2, 3]], "point_labels": [1]
    }  # fmt: skip
    with pytest.raises(ClientError, match="one label per point"):
        prompts.vista3d(points=[[1, 2, 3]], point_labels=[1, 0])
    with pytest.raises(ClientError, match="exactly one class"):
        prompts.vista3d(label_prompt=[3, 4], points=[[1, 2, 3]])
    assert prompts.deepedit({"spleen": [[1, 2, 3]], "background": []}) == {"spleen": [[1, 2, 3]], "background": []}
    with pytest.raises(ClientError, match="three integer"):
        prompts.deepedit({"spleen": [[1, 2]]})


def test_importing_the_client_loads_neither_torch_nor_monai_nor_the_server():
    code = (
        "import sys, medcloud.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'fastapi', 'sqlalchemy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"
