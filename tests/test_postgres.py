"""PostgreSQL as the shared state of several API processes (a real server, tests/postgres.py): two apps on
one database (leader and follower) sharing datasets, experiments and jobs; conditional job transitions
under real concurrency; `nextimage` never handing one image to two processes at once (on SQLite too);
wake-ups across connections, and after the listening connection breaks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from builders import create_dataset, job, seg_experiment, start, wait_status
from conftest import make_api
from helpers import wait_for

from medcloud.datasets.orm import Dataset, Notification
from medcloud.db import Database
from medcloud.devserver import create_key, medcloud_serve
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.jobs.states import JobStatus

SECRET = "postgres-tests-shared-secret-0123456789abcdef"


# ----------------------------------------------------------------- two API processes, one database


def test_two_apps_on_one_postgres_share_datasets_experiments_and_jobs(tmp_path, pg_database, local_dataset, demo_zips):
    data = tmp_path / "data"  # one machine: the processes share the data folder, as with `medcloud serve` twice
    settings = {"database_url": pg_database, "secret_key": SECRET, "max_train_jobs": 1}
    with make_api(data, **settings) as leader, make_api(data, **settings) as follower:
        assert leader.ctx.runner is not None and leader.ctx.hub is not None
        assert follower.ctx.runner is None and follower.ctx.hub is None  # it publishes events to the leader

        dataset_id = create_dataset(leader, local_dataset)
        assert [d["id"] for d in follower.get("datasets").json()["datasets"]] == [dataset_id]
        assert follower.patch(f"datasets/{dataset_id}", json={"name": "renamed"}).status_code == 200
        assert leader.get(f"datasets/{dataset_id}").json()["name"] == "renamed"
        assert leader.get("datasets", params={"name": "renamed"}).json()["datasets"][0]["id"] == dataset_id
        assert follower.get(f"datasets/{dataset_id}", user="bob").status_code == 404  # ownership, as on SQLite

        # nextimage from both processes in turn: every unlabeled image once before any repeats
        served = []
        for api in (leader, follower) * 3:
            resp = api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"})
            assert resp.status_code == 201, resp.text
            served.append(resp.json()["image"])
        unlabeled = resp.json()["unlabeled"]
        assert len(set(served[:unlabeled])) == min(unlabeled, len(served))

        notified = {"added": [{"image": f"img-{i}", "label": f"lab-{i}"} for i in range(3)]}
        resp = follower.post(f"datasets/{dataset_id}/jobs", json={"action": "notify", "specs": notified})
        assert resp.status_code == 201
        with leader.ctx.db.session() as session:
            rows = session.query(Notification).filter_by(dataset_id=dataset_id).order_by(Notification.seq).all()
            assert [(r.section, r.image_id) for r in rows] == [("added", f"img-{i}") for i in range(3)]

        # a train job created through the follower runs in the leader; a cancel through the follower stops it
        exp = seg_experiment(follower, local_dataset, demo_zips)
        assert leader.get(f"experiments/{exp['id']}").json()["name"] == "train"
        job_id = start(follower, exp, {"epochs": 500})
        wait_status(follower, exp, job_id, {"Running"})
        resp = follower.post(f"experiments/{exp['id']}/jobs/{job_id}:cancel")
        assert resp.status_code == 200 and resp.json() == {"message": f"Running job {job_id} cancelled"}
        assert job(follower, exp, job_id)["status"] == "Canceled"  # ended before the cancel answered
        assert leader.delete(f"experiments/{exp['id']}").status_code == 200
        assert follower.delete(f"datasets/{dataset_id}").status_code == 200
        assert dataset_id not in [d["id"] for d in leader.get("datasets").json()["datasets"]]


def test_two_medcloud_serve_processes_on_one_database_answer_every_request(shared_url, tmp_path, local_dataset):
    """Real `medcloud serve` processes (one data folder, one database) under concurrent reads and writes.

    On SQLite this caught a process dropping its own SQLite locks (closing a descriptor of the database file).
    """
    env = {"MEDCLOUD_DATABASE_URL": shared_url, "MEDCLOUD_SECRET_KEY": SECRET}
    data = tmp_path / "served"
    with medcloud_serve(data, env=env) as first, medcloud_serve(data, env=env) as second:
        with pytest.MonkeyPatch.context() as patch:  # `medcloud keys create` reads the same settings
            for name, value in env.items():
                patch.setenv(name, value)
            key = create_key(data, "acme", "alice")
        token = httpx.post(f"{second.url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        failures: list[str] = []

        def client(i: int) -> list[str]:
            base = f"{(first, second)[i % 2].url}/api/v1/orgs/acme"
            created = []
            with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
                for n in range(8):
                    if n % 4 == 3:
                        resp = http.post("/datasets", json={"name": f"c{i}-{n}", "client_url": str(local_dataset)})
                        created += [resp.json()["id"]] if resp.status_code == 201 else []
                    else:
                        resp = http.get("/datasets")
                    if resp.status_code >= 400:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")
            return created

        created = [d for ids in _race(16, client) for d in ids]  # type: ignore[union-attr]
        assert failures == []
        listed = httpx.get(f"{first.url}/api/v1/orgs/acme/datasets", headers=headers).json()["datasets"]
        assert sorted(d["id"] for d in listed) == sorted(created) and len(created) == 16 * 2


# ----------------------------------------------------------------- conditional transitions under concurrency


def _job(db: Database, status: JobStatus = JobStatus.PENDING) -> str:
    with db.session() as session:
        row = jobs.create(session, org="o", user_id="u", experiment_id=str(uuid.uuid4()), action="train", specs={})
        if status != JobStatus.PENDING:
            assert jobs.transition(session, row, JobStatus.RUNNING)
        return row.id


def _race(count: int, target: Callable[[int], object]) -> list[object]:
    """Run `target(i)` in `count` threads released together; their results in order."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - returned and asserted by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_of_many_concurrent_transitions_from_one_status_exactly_one_wins(pg_database):
    dbs = [Database(pg_database) for _ in range(2)]  # two processes' engines
    targets = [JobStatus.RUNNING, JobStatus.CANCELED] * 4
    for _round in range(5):
        job_id = _job(dbs[0])
        all_read = threading.Barrier(len(targets))

        def move(i: int, job_id: str = job_id, all_read: threading.Barrier = all_read) -> bool:
            with dbs[i % 2].session() as session:
                row = session.get(Job, job_id)
                all_read.wait()  # every writer decided from Pending before any writes
                return jobs.transition(session, row, targets[i], f"by {i}")

        results = _race(len(targets), move)
        assert results.count(True) == 1 and results.count(False) == len(targets) - 1, results
        winner = results.index(True)
        with dbs[1].session() as session:
            row = session.get(Job, job_id)
            assert row.status == targets[winner].value
            assert row.result["detailed_status"]["message"] == f"by {winner}"
    for db in dbs:
        db.dispose()


def test_a_stale_row_loses_to_a_committed_cancel_and_sees_it(pg_database):
    db = Database(pg_database)
    job_id = _job(db)
    with db.session() as stale_session:
        stale = stale_session.get(Job, job_id)
        with db.session() as other:
            assert jobs.transition(other, other.get(Job, job_id), JobStatus.CANCELED, "Canceled by the user.")
        assert not jobs.transition(stale_session, stale, JobStatus.RUNNING, "Running.")
        assert stale.status == "Canceled"
    db.dispose()


def test_concurrent_result_merges_all_land_and_none_after_a_cancel(pg_database):
    dbs = [Database(pg_database) for _ in range(2)]
    job_id = _job(dbs[0], JobStatus.RUNNING)

    def merge(i: int) -> bool:
        with dbs[i % 2].session() as session:
            return jobs.merge_result(session, session.get(Job, job_id), {f"key{i}": i}, status=JobStatus.RUNNING)

    assert _race(8, merge) == [True] * 8
    with dbs[0].session() as session:
        row = session.get(Job, job_id)
        assert {k: v for k, v in row.result.items() if k.startswith("key")} == {f"key{i}": i for i in range(8)}
        assert jobs.transition(session, row, JobStatus.CANCELING)
    with dbs[1].session() as session:
        assert not jobs.merge_result(session, session.get(Job, job_id), {"late": 1}, status=JobStatus.RUNNING)
        assert "late" not in session.get(Job, job_id).result
    for db in dbs:
        db.dispose()


# ----------------------------------------------------------------- nextimage across processes

PICKER = """
import json, sys, threading, time
from pathlib import Path
from medcloud.db import Database
from medcloud.devserver import create_key, medcloud_serve
from medcloud.datasets import service
url, dataset_id, images, threads, picks, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
db = Database(url)
candidates = [f"image-{i:03d}" for i in range(images)]
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
out, errors = [], []
def run():
    for _ in range(picks):
        try:
            out.append(service.pick_least_recently_served(db, candidates, dataset_id=dataset_id))
        except Exception as exc:
            errors.append(repr(exc))
workers = [threading.Thread(target=run) for _ in range(threads)]
[w.start() for w in workers]
[w.join() for w in workers]
print(json.dumps({"picks": out, "errors": errors}), flush=True)
"""


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'medcloud.db'}"
    return request.getfixturevalue("pg_database")


def test_nextimage_never_hands_one_image_to_two_processes_at_once(shared_url, tmp_path):
    processes, threads, picks = 2, 4, 5
    images = processes * threads * picks  # exactly one round: any image twice is a collision
    db = Database(shared_url)
    with db.session() as session:
        dataset = Dataset(org="o", user_id="u", type="segmentation", source_kind="objectstore", client_url="/x")
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    go = tmp_path / "go"
    args = [shared_url, dataset_id, str(images), str(threads), str(picks), str(go)]
    procs = [
        subprocess.Popen([sys.executable, "-c", PICKER, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()  # both pick at the same moment
        results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [r["errors"] for r in results] == [[], []]
    served = [image for r in results for image in r["picks"]]
    assert sorted(served) == [f"image-{i:03d}" for i in range(images)]  # each exactly once
    assert all(len(r["picks"]) == threads * picks for r in results)
    db.dispose()


# ----------------------------------------------------------------- wake-ups


def test_wakeups_cross_connections_in_milliseconds_and_survive_a_broken_listener(pg_database, postgres_server):
    publisher, subscriber = Database(pg_database), Database(pg_database)
    got: list[tuple[str | None, float]] = []
    subscriber.wakeups.subscribe("topic", lambda payload: got.append((payload, time.perf_counter())))
    latencies = []
    for i in range(20):
        sent = time.perf_counter()
        publisher.wakeups.publish("topic", str(i))
        wait_for(lambda i=i: any(p == str(i) for p, _ in got), timeout=5, what=f"wake-up {i}")
        latencies.append(next(at for p, at in got if p == str(i)) - sent)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.1 and latencies[-1] < 1.0, latencies
    publisher.wakeups.publish("other-topic", "x")  # no subscriber here: nothing delivered to "topic"

    # The listening connection dies: the subscriber hears "look at everything" (None), then wake-ups again.
    with psycopg.connect(
        host=str(postgres_server.socket_dir), port=postgres_server.port, user="postgres", dbname="postgres"
    ) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN%%'",
            (subscriber.engine.url.database,),
        ).fetchall()
    assert killed and all(row[0] for row in killed)
    wait_for(lambda: any(p is None for p, _ in got), timeout=10, what="the resync after reconnecting")
    publisher.wakeups.publish("topic", "after")
    wait_for(lambda: any(p == "after" for p, _ in got), timeout=10, what="a wake-up after reconnecting")
    assert [p for p, _ in got if p not in (None, "after")] == [str(i) for i in range(20)]
    publisher.dispose()
    subscriber.dispose()
