"""Hostile bundles against the sandbox (issue 18): each attack, and its effect on the server, one test each.

A probe bundle (`probe_bundle.py`) runs as a model host and as a train job and tries what a bundle author
could: read the master key, the database, the ticket and another experiment's bundle; connect to the API,
PostgreSQL and the cloud metadata address; plant links where the server reads or once touched names;
answer with a pickle, an oversized or a malformed frame; replace its outputs by links; fork and allocate
without end; leave a process behind. Every test asserts on the effect: no file created, no byte of the key
served, no connection accepted, no process left.
"""

from __future__ import annotations

import json
import os
import select
import socket
import tarfile
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from builders import create_dataset
from conftest import make_api
from helpers import wait_for
from sandbox_scene import Scene, read_probe, refused, scene, sees_only_mount_points

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the hostile-bundle suite runs the server as root, as deployed"
)
SECRET = "s" * 40


# -- the model host ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_attack(tmp_path_factory, demo_bundles, monkeypatch_module) -> Iterator[tuple[Scene, str, dict, object]]:
    """One hostile model host: its report, and the answer to a request whose outputs it replaced by links."""
    from medcloud.demo.synthetic import write_demo_dataset

    monkeypatch_module.setenv("MEDCLOUD_DATABASE_PASSWORD", SECRET)
    monkeypatch_module.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-of-the-server")
    tmp = tmp_path_factory.mktemp("host-attack")
    dataset_root = write_demo_dataset(tmp / "dataset").parent
    with scene(tmp, dataset_root, demo_bundles) as s:
        exp_id = s.probe_experiment(demo_bundles["segmentation"], s.config("report"), realtime=True)
        answer = s.infer(exp_id)
        report = read_probe(s.data / "hosts" / exp_id / "out" / "probe.json")
        yield s, exp_id, report, answer


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_host_code_runs_as_its_own_uid_with_an_allow_listed_environment(host_attack):
    _s, _exp, report, _answer = host_attack
    assert report["uid"] >= 2_100_000_000
    assert report["env"] == []


def test_host_code_reads_no_server_file(host_attack):
    _s, _exp, report, _answer = host_attack
    refused(report, "secret_key", "database", "list_cache", "host_log")
    sees_only_mount_points(report)


def test_host_code_reads_no_other_experiment(host_attack):
    _s, _exp, report, _answer = host_attack
    refused(report, "other_experiment")


def test_host_code_sees_no_server_process(host_attack):
    _s, _exp, report, _answer = host_attack
    refused(report, "parent_environ", "server_environ")


def test_host_code_cannot_write_its_bundle(host_attack):
    s, exp_id, report, _answer = host_attack
    refused(report, "write_bundle")
    assert not (s.data / "experiments" / exp_id / "bundle" / "planted.py").exists()


def test_host_code_has_no_network(host_attack):
    s, _exp, report, _answer = host_attack
    refused(report, "tcp_api", "tcp_postgres", "tcp_metadata")
    assert s.nothing_connected()


def test_host_code_cannot_hard_link_the_master_key(host_attack):
    s, _exp, report, _answer = host_attack
    refused(report, "link_secret")
    key = (s.data / "secret.key").stat()
    assert key.st_nlink == 1 and key.st_mode & 0o777 == 0o600


def test_an_output_replaced_by_a_link_serves_no_byte_of_the_key(host_attack):
    s, _exp, _report, answer = host_attack
    assert answer.status_code == 503, answer.text
    assert s.master_key() not in answer.text
    assert "cannot be read" in answer.json()["error_desc"]


def test_links_planted_in_the_host_folder_make_the_server_create_nothing(host_attack):
    s, exp_id, report, _answer = host_attack
    assert report["plant_host.log"] == "ok:None"  # the probe did plant them
    for _ in range(2):
        again = s.infer(exp_id)
        assert again.status_code == 503 and s.master_key() not in again.text
    assert s.planted() == []


def test_error_messages_name_no_server_path(host_attack):
    s, _exp, _report, answer = host_attack
    assert str(s.data) not in answer.text


@pytest.mark.parametrize("mode", ["pickle", "oversized", "malformed"])
def test_a_host_that_sends_no_json_frame_is_stopped_and_nothing_it_sent_runs(
    tmp_path, local_dataset, demo_bundles, mode
):
    with scene(tmp_path, local_dataset, demo_bundles) as s:
        config = s.config(mode)
        for _ in range(2):  # the host's first frame answers the load check at creation: refused each time
            answer = s.create_probe(demo_bundles["segmentation"], config, realtime=True)
            assert answer.status_code == 503, answer.text
            assert "malformed reply" in answer.json()["error_desc"]
        assert not Path(config["marker"]).exists()
        assert s.api.client.get("/api/v1/health/liveness").json()["status"] == "ok"
        listed = s.api.get("experiments", user="bob").json()
        assert all(not e["name"].startswith("probe") for e in (listed if isinstance(listed, list) else []))


def test_fork_bomb_and_memory_hog_hit_their_limits_and_the_server_serves_on(tmp_path, local_dataset, demo_bundles):
    limits = {"sandbox_max_processes": 300, "sandbox_memory_bytes": 8 * 1024**3}
    with scene(tmp_path, local_dataset, demo_bundles, **limits) as s:
        bomb = s.probe_experiment(demo_bundles["segmentation"], s.config("forkbomb", forks=600), realtime=True)
        s.infer(bomb)
        report = read_probe(s.data / "hosts" / bomb / "out" / "probe.json")
        assert report["forks"] < 300 and report["fork_failure"] == "BlockingIOError:11", report
        hog = s.probe_experiment(
            demo_bundles["segmentation"], s.config("memory", hog_bytes=12 * 1024**3), realtime=True
        )
        s.infer(hog)
        report = read_probe(s.data / "hosts" / hog / "out" / "probe.json")
        assert report["memory"] == "MemoryError", report
        assert s.api.client.get("/api/v1/health/liveness").json()["status"] == "ok"


# -- a train job ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_attack(tmp_path_factory, demo_bundles) -> Iterator[tuple[Scene, str, str, dict]]:
    from medcloud.demo.synthetic import write_demo_dataset

    tmp = tmp_path_factory.mktemp("job-attack")
    dataset_root = write_demo_dataset(tmp / "dataset").parent
    with scene(tmp, dataset_root, demo_bundles) as s:
        tag = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
        exp_id = s.probe_experiment(demo_bundles["segmentation"], s.config("detach", detach_tag=tag), realtime=False)
        job_id = s.train(exp_id)
        report = read_probe(s.data / "jobs" / job_id / "model" / "probe.json")
        report["tag"] = tag
        yield s, exp_id, job_id, report


def test_job_code_cannot_read_its_ticket_and_the_worker_deleted_it(job_attack):
    s, _exp, job_id, report = job_attack
    refused(report, "ticket")
    assert not (s.data / "jobs" / job_id / "ticket.json").exists()


def test_job_code_reads_no_server_file_and_no_other_experiment(job_attack):
    _s, _exp, _job, report = job_attack
    refused(report, "secret_key", "database", "list_cache", "other_experiment", "link_secret")
    sees_only_mount_points(report)
    assert report["env"] == []


def test_job_code_has_no_network(job_attack):
    s, _exp, _job, report = job_attack
    refused(report, "tcp_api", "tcp_postgres", "tcp_metadata")
    assert s.nothing_connected()


def test_a_detached_process_ends_with_its_job(job_attack):
    _s, _exp, _job, report = job_attack
    assert report["detached"] == "spawned"

    def leftovers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if report["tag"].encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found

    assert wait_for(lambda: leftovers() == [], timeout=30, what="the detached process to be gone")


def test_links_planted_in_the_job_folder_are_neither_followed_nor_served(job_attack):
    s, exp_id, job_id, _report = job_attack
    assert s.planted() == []
    master = s.master_key()
    logs = s.api.get(f"experiments/{exp_id}/jobs/{job_id}/logs", user="bob")
    assert master not in logs.text
    download = s.api.get(f"experiments/{exp_id}/jobs/{job_id}:download", user="bob")
    assert download.status_code == 200, download.text
    with tarfile.open(fileobj=BytesIO(download.content)) as tar:
        members = tar.getmembers()
        assert members and all(m.isfile() or m.isdir() for m in members)
        for member in members:
            if member.isfile():
                assert master.encode() not in tar.extractfile(member).read(), member.name


# -- the pieces -------------------------------------------------------------------------------------------


def test_model_environment_is_an_allow_list(tmp_path, monkeypatch):
    from medcloud.config import Settings
    from medcloud.sandbox import Sandbox

    monkeypatch.setenv("MEDCLOUD_SECRET_KEY", SECRET)
    monkeypatch.setenv("AZURE_STORAGE_KEY", "k")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    box = Sandbox(Settings(data_dir=tmp_path / "data", model_sandbox="unsafe").resolved())
    env = box.env()
    assert "MEDCLOUD_SECRET_KEY" not in env and "AZURE_STORAGE_KEY" not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["HOME"] == "/tmp"


def test_each_experiment_gets_its_own_uid_and_a_fresh_folder(tmp_path):
    from medcloud.config import Settings
    from medcloud.sandbox import Sandbox

    data = tmp_path / "data"
    box = Sandbox(Settings(data_dir=data, model_sandbox="bwrap").resolved())
    a, b = box.identity("a"), box.identity("b")
    assert a.uid != b.uid and a.uid and a.uid > 1000 and box.identity("a") == a
    folder = data / "hosts" / "a" / "out"
    folder.parent.mkdir(parents=True)
    folder.mkdir()
    os.symlink(data / "secret-elsewhere", folder / "left-behind")
    box.fresh_folder(folder, experiment_id="a")
    assert folder.stat().st_uid == a.uid and folder.stat().st_mode & 0o777 == 0o700
    assert list(folder.iterdir()) == [] and not (data / "secret-elsewhere").exists()
    assert data.stat().st_mode & 0o777 == 0o700


def test_without_bubblewrap_model_code_is_refused_unless_unsafe(tmp_path, monkeypatch):
    from medcloud.config import Settings
    from medcloud.errors import Unavailable
    from medcloud.sandbox import Sandbox

    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap to be found
    box = Sandbox(Settings(data_dir=tmp_path / "auto", model_sandbox="auto").resolved())
    assert box.describe()["mode"] == "refused" and "bwrap" in box.describe()["problem"]
    with pytest.raises(Unavailable, match="MEDCLOUD_MODEL_SANDBOX=unsafe"):
        box.launch(["-c", "pass"], experiment_id="e", readable=[], writable=None)
    with pytest.raises(RuntimeError, match="bubblewrap"):
        Sandbox(Settings(data_dir=tmp_path / "strict", model_sandbox="bwrap").resolved())
    unsafe = Sandbox(Settings(data_dir=tmp_path / "unsafe", model_sandbox="unsafe").resolved())
    assert unsafe.describe()["mode"] == "unsafe"


def test_health_says_which_sandbox_runs(api):
    body = api.client.get("/api/v1/health/readiness").json()
    assert body["model_sandbox"]["mode"] == "bwrap"
    assert "network" in body["model_sandbox"]["isolation"]


def test_staged_inputs_survive_cache_eviction(tmp_path, local_dataset, demo_zips):
    """Finding 14: a job's inputs are links in its own folder, so the cache may evict its copies mid-run."""
    from medcloud.jobs.orm import Job
    from medcloud.learning.tickets import build_ticket
    from medcloud.worker.staging import WorkerContext, stage_job

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


NON_ROOT_PROBE = """
import json, os, socket, subprocess, sys
from pathlib import Path
from medcloud.config import Settings
from medcloud.sandbox import Sandbox

root, port = Path(sys.argv[1]), int(sys.argv[2])
box = Sandbox(Settings(data_dir=root / "data").resolved())
(root / "data" / "secret.key").write_text("k" * 40)
out = box.fresh_folder(root / "data" / "hosts" / "e" / "out", experiment_id="e")
code = (
    "import os, socket, json\\n"
    "s = socket.socket(); s.settimeout(2)\\n"
    "print(json.dumps({'uid': os.getuid(), 'tcp': s.connect_ex(('127.0.0.1', %d)),"
    " 'key': os.path.exists(%r), 'data': sorted(os.listdir(%r))}))\\n"
    "open('written', 'w').write('x')\\n"
) % (port, str(root / "data" / "secret.key"), str(root / "data"))
launch = box.launch(["-c", code], experiment_id="e", readable=[], writable=out)
proc = subprocess.run(launch.argv, capture_output=True, text=True, timeout=120, **launch.popen_kwargs())
print(json.dumps({"mode": box.mode, "rc": proc.returncode, "out": proc.stdout, "err": proc.stderr[-2000:],
                  "written": (out / "written").read_text() if (out / "written").exists() else None}))
"""


def test_a_server_that_is_not_root_sandboxes_model_code_in_a_user_namespace():
    """As an ordinary user, bubblewrap makes a user namespace: the same view, no network, uid 65534 inside."""
    import shutil
    import subprocess
    import sys
    import tempfile

    drop = "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all"
    if os.system(f"{drop} test -x {os.path.realpath(sys.executable)} 2>/dev/null"):
        pytest.skip("this machine's Python is not reachable by an ordinary user (e.g. a pyenv under /root)")
    folder = Path(tempfile.mkdtemp(prefix="medcloud-nonroot-"))
    os.chown(folder, 65534, 65534)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        proc = subprocess.run(
            [*drop.split(), sys.executable, "-c", NON_ROOT_PROBE, str(folder), str(listener.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=300,
            env={"PATH": os.environ["PATH"], "HOME": str(folder)},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["mode"] == "bwrap" and result["rc"] == 0, result
        inside = json.loads(result["out"].strip().splitlines()[-1])
        assert inside["uid"] == 65534 and inside["tcp"] != 0 and inside["key"] is False
        assert set(inside["data"]) <= {"hosts"}, inside
        assert result["written"] == "x"
        assert not select.select([listener], [], [], 0)[0]
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_user_namespace_variant_isolates_the_same_way(tmp_path):
    """The command line a non-root server builds (a user namespace, uid 65534 inside), run here: the same view
    of the data dir, no network, one writable folder."""
    import subprocess

    from medcloud.config import Settings
    from medcloud.sandbox import Sandbox

    box = Sandbox(Settings(data_dir=tmp_path / "data").resolved())
    box.root = False  # as a server that is not root builds it
    (tmp_path / "data" / "secret.key").write_text("k" * 40)
    out = box.fresh_folder(tmp_path / "data" / "hosts" / "e" / "out", experiment_id="e")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    code = (
        "import os, socket, json\n"
        "s = socket.socket(); s.settimeout(2)\n"
        f"print(json.dumps({{'uid': os.getuid(), 'tcp': s.connect_ex(('127.0.0.1', {listener.getsockname()[1]})),"
        f" 'key': os.path.exists({str(tmp_path / 'data' / 'secret.key')!r}),"
        f" 'data': sorted(os.listdir({str(tmp_path / 'data')!r}))}}))\n"
        "open('written', 'w').write('x')\n"
    )
    launch = box.launch(["-c", code], experiment_id="e", readable=[], writable=out)
    assert "--unshare-user" in launch.argv and "setpriv" not in launch.argv
    try:
        proc = subprocess.run(launch.argv, capture_output=True, text=True, timeout=120, **launch.popen_kwargs())
        assert proc.returncode == 0, proc.stderr[-2000:]
        inside = json.loads(proc.stdout.strip().splitlines()[-1])
        assert inside["uid"] == 65534 and inside["tcp"] != 0 and inside["key"] is False
        assert set(inside["data"]) <= {"hosts"}, inside
        assert (out / "written").read_text() == "x"
        assert not select.select([listener], [], [], 0)[0]
    finally:
        listener.close()
