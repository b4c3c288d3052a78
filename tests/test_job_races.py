"""Job status races, forced deterministically: cancel vs start, cancel vs end, restarts, kill -9 of a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from builders import segmentation_body
from helpers import wait_for

from medcloud.config import Settings
from medcloud.context import Context
from medcloud.execution.local_jobs import LocalJobs, find_workers
from medcloud.jobs import files
from medcloud.jobs import service as jobs
from medcloud.jobs.orm import Job
from medcloud.jobs.runner import Scheduler
from medcloud.jobs.states import JobStatus
from medcloud.jobs.ticket import JobTicket
from medcloud.learning.actions import begin_cancel
from medcloud.learning.controller import AnnotationController

# A stand-in worker: its command line is a worker's (`medcloud.worker.run --job-id ID`), and it ends
# only when the test says so, writing the outcome a real worker would.
FAKE_WORKER = """
import json, os, sys, time
from pathlib import Path
job_dir = Path(sys.argv[4])
while not (job_dir / "go").exists():
    time.sleep(0.02)
tmp = job_dir / ".outcome.tmp"
tmp.write_text(json.dumps({"status": "Done", "message": "Done.", "result": {"key_metric": 0.75, "epoch": 3}}))
os.replace(tmp, job_dir / "outcome.json")
"""


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = Context.build(Settings(data_dir=tmp_path / "data", demo=False))
    yield context
    context.close()


class Workers:
    """Fake worker processes started by the runner (through `_popen`) or by a test (an orphan)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.procs: list[subprocess.Popen] = []

    def job_dir(self, job_id: str) -> Path:
        return files.job_dir(self.ctx.settings.data_dir, job_id)

    def start(self, job_id: str) -> subprocess.Popen:
        self.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_WORKER, "medcloud.worker.run", "--job-id", job_id, str(self.job_dir(job_id))],
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def finish(self, job_id: str, proc: subprocess.Popen) -> None:
        """Let the worker write its outcome, and wait until it is gone."""
        (self.job_dir(job_id) / "go").touch()
        proc.wait(timeout=30)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def workers(ctx: Context) -> Iterator[Workers]:
    fakes = Workers(ctx)
    yield fakes
    fakes.close()


def ticket_of(session, row: Job) -> JobTicket:  # type: ignore[no-untyped-def]
    return JobTicket(job_id=row.id, action=row.action, experiment_id=row.experiment_id, network_arch="x", bundle_dir="")


def scheduler(ctx: Context, max_parallel: int = 1) -> Scheduler:
    """A scheduler that is never started (the test drives it), on the local backend, with stand-in tickets."""
    runner = Scheduler(ctx, LocalJobs(ctx.settings), max_parallel=max_parallel)
    runner._ticket = ticket_of  # type: ignore[method-assign]  # the jobs' experiments do not exist
    return runner


def runner_with_fakes(ctx: Context, workers: Workers, started: list[str] | None = None) -> Scheduler:
    """A scheduler whose backend spawns fake workers."""
    runner = scheduler(ctx, max_parallel=2)

    def popen(job_id: str, directory: Path) -> subprocess.Popen:
        if started is not None:
            started.append(job_id)
        return workers.start(job_id)

    runner.backend._popen = popen  # type: ignore[attr-defined]
    return runner


def proc_of(runner: Scheduler, job_id: str) -> subprocess.Popen:
    return runner.backend._procs[job_id]  # type: ignore[attr-defined]


def local_handle(pid: int | None) -> dict | None:
    return {"backend": "local", "pid": pid} if pid else None


def pid_of(row: Job) -> int | None:
    return (row.backend_handle or {}).get("pid")


def add_job(ctx: Context, status: JobStatus = JobStatus.PENDING, pid: int | None = None) -> str:
    with ctx.db.session() as session:
        row = jobs.create(
            session, org="o", user_id="u", experiment_id=str(uuid.uuid4()), action="train", specs={"epochs": 1}
        )
        path = {JobStatus.RUNNING: [JobStatus.RUNNING], JobStatus.CANCELING: [JobStatus.RUNNING, JobStatus.CANCELING]}
        for step in path.get(status, []):
            assert jobs.transition(session, row, step, values={"backend_handle": local_handle(pid)})
        return row.id


def status_of(ctx: Context, job_id: str) -> Job:
    with ctx.db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return row


def cancel(ctx: Context, job_id: str) -> tuple[str, list[str]]:
    with ctx.db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return begin_cancel(session, row)


# ----------------------------------------------------------------- the conditional write itself


def test_transition_from_a_stale_status_is_a_no_op_and_shows_the_winner(ctx):
    job_id = add_job(ctx)
    with ctx.db.session() as stale_session:
        stale = stale_session.get(Job, job_id)
        with ctx.db.session() as other:
            assert jobs.transition(other, other.get(Job, job_id), JobStatus.CANCELED, "Canceled by the user.")
        assert not jobs.transition(
            stale_session, stale, JobStatus.RUNNING, "Running.", values={"backend_handle": local_handle(123)}
        )
        assert stale.status == "Canceled" and stale.backend_handle is None  # refreshed: the loser sees who won
    row = status_of(ctx, job_id)
    assert row.status == "Canceled" and row.result["detailed_status"]["message"] == "Canceled by the user."


def test_merge_result_keeps_a_concurrent_update_and_respects_the_status(ctx):
    job_id = add_job(ctx, JobStatus.RUNNING)
    with ctx.db.session() as stale_session:
        stale = stale_session.get(Job, job_id)
        with ctx.db.session() as other:
            jobs.merge_result(other, other.get(Job, job_id), {"epoch": 1})
        jobs.merge_result(stale_session, stale, {"key_metric": 0.5})
    assert status_of(ctx, job_id).result["epoch"] == 1  # not lost to the stale copy
    assert status_of(ctx, job_id).result["key_metric"] == 0.5
    cancel(ctx, job_id)
    with ctx.db.session() as session:
        assert not jobs.merge_result(session, session.get(Job, job_id), {"epoch": 2}, status=JobStatus.RUNNING)
    assert status_of(ctx, job_id).result["epoch"] == 1


# ----------------------------------------------------------------- cancel vs start


def test_cancel_committed_after_the_scheduler_read_starts_no_process(ctx, workers):
    started: list[str] = []
    runner = runner_with_fakes(ctx, workers, started)
    job_id = add_job(ctx)
    with ctx.db.session() as stale_session:
        stale = stale_session.get(Job, job_id)  # the scheduler read it Pending...
        message, to_kill = cancel(ctx, job_id)  # ...then a cancel committed
        assert to_kill == [] and message == f"Pending job {job_id} cancelled"
        assert runner._submit(stale_session, stale) is False
    assert started == [] and runner._running == {} and find_workers(job_id) == []
    assert status_of(ctx, job_id).status == "Canceled"


def test_cancel_between_the_schedulers_read_and_write_through_the_real_schedule(ctx, workers, monkeypatch):
    """`_schedule` paused between reading the Pending row and writing Running; a cancel commits meanwhile."""
    started: list[str] = []
    runner = runner_with_fakes(ctx, workers, started)
    job_id = add_job(ctx)
    reached, resume = threading.Event(), threading.Event()
    real_transition = jobs.transition

    def paused(session, row, target, *args, **kwargs):  # type: ignore[no-untyped-def]
        if target == JobStatus.RUNNING:
            reached.set()
            assert resume.wait(30)
        return real_transition(session, row, target, *args, **kwargs)

    monkeypatch.setattr(jobs, "transition", paused)
    scheduler = threading.Thread(target=runner._schedule)
    scheduler.start()
    assert reached.wait(30)
    monkeypatch.setattr(jobs, "transition", real_transition)  # the cancel's own writes are not paused
    assert cancel(ctx, job_id)[1] == []
    resume.set()
    scheduler.join(30)
    assert not scheduler.is_alive()
    assert started == [] and runner._running == {} and find_workers(job_id) == []
    assert status_of(ctx, job_id).status == "Canceled"


def test_cancel_with_a_stale_pending_row_after_the_start_kills_the_process(ctx, workers):
    runner = runner_with_fakes(ctx, workers)
    job_id = add_job(ctx)
    with ctx.db.session() as stale_session:
        stale = stale_session.get(Job, job_id)  # the cancel read it Pending...
        runner._schedule()  # ...then the runner started it
        pid = proc_of(runner, job_id).pid
        assert pid_of(status_of(ctx, job_id)) == pid
        message, to_kill = begin_cancel(stale_session, stale)
    assert to_kill == [job_id] and message == f"Running job {job_id} cancelled"
    asyncio.run(runner.cancel(job_id))
    row = status_of(ctx, job_id)
    assert row.status == "Canceled" and find_workers(job_id) == []


def test_cancel_while_the_process_starts_kills_it_once_started(ctx, workers):
    """Running is committed, then a cancel commits before the process exists: the process must not survive."""
    runner = runner_with_fakes(ctx, workers)
    job_id = add_job(ctx)
    canceled: list[list[str]] = []
    start_fake = runner.backend._popen  # type: ignore[attr-defined]

    def popen_after_a_cancel(job_id: str, directory: Path) -> subprocess.Popen:
        canceled.append(cancel(ctx, job_id)[1])
        return start_fake(job_id, directory)

    runner.backend._popen = popen_after_a_cancel  # type: ignore[attr-defined]
    runner._schedule()
    assert canceled == [[job_id]]
    proc = proc_of(runner, job_id)
    assert proc is not None and status_of(ctx, job_id).status == "Canceling"
    assert status_of(ctx, job_id).result["detailed_status"]["message"] == "Canceling."  # not "Running."
    runner._check_running()  # the runner's own look kills it, even before the cancel's kill comes
    wait_for(lambda: proc.poll() is not None, what="the canceled worker to die")
    assert runner._check_running() == [job_id]
    assert status_of(ctx, job_id).status == "Canceled" and find_workers(job_id) == []


def test_a_process_that_cannot_start_makes_an_error(ctx):
    runner = scheduler(ctx)

    def broken(job_id: str, directory: Path) -> subprocess.Popen:
        raise OSError("no such interpreter")

    runner.backend._popen = broken  # type: ignore[attr-defined]
    job_id = add_job(ctx)
    runner._schedule()
    row = status_of(ctx, job_id)
    assert (
        row.status == "Error"
        and "could not be started: no such interpreter" in row.result["detailed_status"]["message"]
    )
    assert runner._running == {}


def test_a_backend_that_cannot_be_asked_about_one_job_leaves_it_running_and_the_others_move_on(ctx, workers):
    """A cluster's Jobs API down for one job: that job stays Running (not ended for nothing), others settle."""
    runner = runner_with_fakes(ctx, workers)
    unreachable, reachable = add_job(ctx), add_job(ctx)
    runner._schedule()
    for job_id in (unreachable, reachable):
        workers.finish(job_id, proc_of(runner, job_id))
    real_report = runner.backend.report

    def report(job_id, handle):  # type: ignore[no-untyped-def]
        if job_id == unreachable:
            raise ConnectionError("dashboard unreachable")
        return real_report(job_id, handle)

    runner.backend.report = report  # type: ignore[method-assign]
    assert runner._check_running() == [reachable]
    assert status_of(ctx, unreachable).status == "Running" and status_of(ctx, reachable).status == "Done"
    runner.backend.report = real_report  # type: ignore[method-assign]
    assert runner._check_running() == [unreachable]
    assert status_of(ctx, unreachable).status == "Done"


# ----------------------------------------------------------------- cancel vs end


def test_cancel_committed_between_the_end_check_read_and_write_ends_canceled(ctx, workers, monkeypatch):
    runner = runner_with_fakes(ctx, workers)
    job_id = add_job(ctx)
    runner._schedule()
    workers.finish(job_id, proc_of(runner, job_id))
    real_read = files.read_json
    to_kill: list[str] = []

    def cancel_then_read(path: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path.name == files.OUTCOME and not to_kill:
            to_kill.extend(cancel(ctx, job_id)[1])  # the check has read the row Running; the cancel lands now
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(files, "read_json", cancel_then_read)
    assert runner._check_running() == [job_id]
    monkeypatch.setattr(files, "read_json", real_read)
    assert to_kill == [job_id]
    asyncio.run(runner.cancel(job_id))  # what the cancel route does next: nothing left to kill
    row = status_of(ctx, job_id)
    assert row.status == "Canceled", row.result  # the cancel committed first, so it won; not stuck in Canceling
    assert find_workers(job_id) == []


def test_end_committed_before_a_cancel_with_a_stale_row_stays_done(ctx, workers):
    runner = runner_with_fakes(ctx, workers)
    job_id = add_job(ctx)
    runner._schedule()
    workers.finish(job_id, proc_of(runner, job_id))
    with ctx.db.session() as stale_session:
        stale = stale_session.get(Job, job_id)  # the cancel read it Running...
        assert stale.status == "Running"
        assert runner._check_running() == [job_id]  # ...then the runner recorded the end
        message, to_kill = begin_cancel(stale_session, stale)
    assert to_kill == [] and "already ended (Done)" in message
    row = status_of(ctx, job_id)
    assert row.status == "Done" and row.result["key_metric"] == 0.75
    assert find_workers(job_id) == []


# ----------------------------------------------------------------- restart


def test_restart_running_job_whose_outcome_says_done_becomes_done_with_its_result(ctx, workers):
    job_id = add_job(ctx)
    proc = workers.start(job_id)
    with ctx.db.session() as session:
        jobs.transition(
            session, session.get(Job, job_id), JobStatus.RUNNING, values={"backend_handle": local_handle(proc.pid)}
        )
    workers.finish(job_id, proc)  # it finished while the server was down
    scheduler(ctx)._reap_or_adopt()
    row = status_of(ctx, job_id)
    assert row.status == "Done", row.result
    assert row.result["key_metric"] == 0.75 and row.result["detailed_status"]["message"] == "Done."


def test_restart_canceling_job_whose_process_is_gone_becomes_canceled(ctx):
    job_id = add_job(ctx, JobStatus.CANCELING, pid=2**22 + 7)  # no such worker
    scheduler(ctx)._reap_or_adopt()
    row = status_of(ctx, job_id)
    assert row.status == "Canceled" and row.result["detailed_status"]["message"] == "Canceled by the user."


def test_restart_running_job_without_process_or_outcome_is_an_error_saying_so(ctx):
    job_id = add_job(ctx, JobStatus.RUNNING, pid=2**22 + 7)
    scheduler(ctx)._reap_or_adopt()
    row = status_of(ctx, job_id)
    assert row.status == "Error"
    assert "process is gone (the server or the machine restarted" in row.result["detailed_status"]["message"]


def test_restart_job_the_server_died_before_starting_is_queued_again_and_runs_once(ctx, workers):
    starting = add_job(ctx, JobStatus.RUNNING)  # intent committed, the server died before the process started
    started: list[str] = []
    runner = runner_with_fakes(ctx, workers, started)
    runner._reap_or_adopt()
    row = status_of(ctx, starting)
    assert row.status == "Pending" and "Queued again" in row.result["detailed_status"]["message"]
    runner._schedule()
    assert started == [starting] and status_of(ctx, starting).status == "Running"


def test_restart_job_whose_worker_started_and_died_without_outcome_is_an_error(ctx):
    job_id = add_job(ctx, JobStatus.RUNNING)  # no pid recorded, but its worker had opened its log
    directory = files.job_dir(ctx.settings.data_dir, job_id)
    directory.mkdir(parents=True)
    (directory / files.LOG).write_text("Traceback ...\nKilled\n")
    scheduler(ctx)._reap_or_adopt()
    row = status_of(ctx, job_id)
    assert row.status == "Error" and "process is gone" in row.result["detailed_status"]["message"]


def test_restart_adopts_an_orphan_worker_whose_pid_was_never_recorded(ctx, workers):
    """The server committed Running, started the worker and died before recording its pid."""
    job_id = add_job(ctx, JobStatus.RUNNING)  # pid NULL: the "starting" marker
    orphan = workers.start(job_id)
    wait_for(lambda: find_workers(job_id) == [orphan.pid], what="the orphan worker to run")
    started: list[str] = []
    runner = runner_with_fakes(ctx, workers, started)
    runner._reap_or_adopt()
    runner._schedule()
    assert started == []  # not started a second time
    assert find_workers(job_id) == [orphan.pid]
    assert pid_of(status_of(ctx, job_id)) == orphan.pid and status_of(ctx, job_id).status == "Running"
    assert runner._check_running() == []  # watched by its pid: still alive
    workers.finish(job_id, orphan)
    assert runner._check_running() == [job_id]
    row = status_of(ctx, job_id)
    assert row.status == "Done" and row.result["key_metric"] == 0.75


def test_restart_adopts_a_canceling_worker_and_kills_it(ctx, workers):
    job_id = add_job(ctx, JobStatus.CANCELING)
    orphan = workers.start(job_id)
    wait_for(lambda: find_workers(job_id) == [orphan.pid], what="the orphan worker to run")
    runner = runner_with_fakes(ctx, workers)
    runner._reap_or_adopt()
    assert status_of(ctx, job_id).status == "Canceling"
    runner._check_running()
    orphan.wait(timeout=30)
    assert runner._check_running() == [job_id]
    assert status_of(ctx, job_id).status == "Canceled" and find_workers(job_id) == []


# ----------------------------------------------------------------- kill -9 of a real server

ORG = "races"


def _client(server, key: str) -> httpx.Client:  # type: ignore[no-untyped-def]
    token = httpx.post(f"{server.url}/api/v1/login", json={"ngc_api_key": key}).json()["token"]
    return httpx.Client(
        base_url=f"{server.url}/api/v1/orgs/{ORG}", headers={"Authorization": f"Bearer {token}"}, timeout=120
    )


def _ok(resp: httpx.Response) -> object:
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def _db_status(data_dir: Path, job_id: str) -> tuple[str, int | None]:
    with sqlite3.connect(data_dir / "medcloud.db") as db:
        status, handle = db.execute("SELECT status, backend_handle FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return status, (json.loads(handle) or {}).get("pid") if handle else None


def test_server_killed_at_each_job_phase_loses_nothing(tmp_path, local_dataset, demo_zips):
    from medcloud.devserver import create_key, medcloud_serve

    data_dir = tmp_path / "server"
    key = create_key(data_dir, ORG, "u")
    env = {"MEDCLOUD_MAX_TRAIN_JOBS": "1"}

    def job(http: httpx.Client, exp: str, job_id: str) -> dict:
        return http.get(f"/experiments/{exp}/jobs/{job_id}").json()

    # Phase 1: one job Running (its worker lives on), one Pending behind it.
    with medcloud_serve(data_dir, env) as server:
        http = _client(server, key)
        body = {"name": "d", "type": "semantic_segmentation", "format": "monai", "client_url": str(local_dataset)}
        ds = _ok(http.post("/datasets", json=body))["id"]  # type: ignore[index]
        exp = _ok(http.post("/experiments", json=segmentation_body(ds, demo_zips, name="e")))["id"]  # type: ignore[index]
        long = _ok(http.post(f"/experiments/{exp}/jobs", json={"action": "train", "specs": {"epochs": 500}}))
        short = _ok(http.post(f"/experiments/{exp}/jobs", json={"action": "train", "specs": {"epochs": 1}}))
        wait_for(lambda: _db_status(data_dir, long)[1], timeout=60, what="the long job's pid")
        long_worker = find_workers(long)
        assert long_worker == [_db_status(data_dir, long)[1]]
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    assert _db_status(data_dir, long)[0] == "Running" and _db_status(data_dir, short)[0] == "Pending"

    # Phase 2: the Running job is adopted (not started again) and canceled; the Pending one starts. The
    # server is frozen once its worker runs and killed after the worker wrote its outcome.
    with medcloud_serve(data_dir, env) as server:
        http = _client(server, key)
        assert job(http, exp, long)["status"] == "Running"
        assert find_workers(long) == long_worker  # adopted: the same process, and only it
        resp = http.post(f"/experiments/{exp}/jobs/{long}:cancel")
        assert resp.json() == {"message": f"Running job {long} cancelled"}
        assert job(http, exp, long)["status"] == "Canceled"
        assert find_workers(long) == []
        short_worker = wait_for(lambda: find_workers(short), timeout=60, what="the short job's worker")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            outcome = files.job_dir(data_dir, short) / files.OUTCOME
            wait_for(outcome.exists, timeout=300, what="the short job's outcome")
            wait_for(lambda: find_workers(short) == [], timeout=60, what="the short job's worker to end")
        finally:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
    assert short_worker and _db_status(data_dir, short)[0] == "Running"  # the server never saw the end
    assert json.loads(outcome.read_text())["status"] == "Done"

    # Phase 3: the end that happened while the server was down is recorded, with its result.
    with medcloud_serve(data_dir, env) as server:
        http = _client(server, key)
        done = job(http, exp, short)
        assert done["status"] == "Done", done["result"]
        assert done["result"]["max_epoch"] == 1 and "key_metric" in done["result"]
        assert {j["status"] for j in http.get(f"/experiments/{exp}/jobs").json()["jobs"]} == {"Done", "Canceled"}
    assert find_workers(long) == find_workers(short) == []


# ----------------------------------------------------------------- cancel vs the annotation controller


def _annotation_job(ctx: Context) -> tuple[str, AnnotationController, SimpleNamespace]:
    experiment = SimpleNamespace(id=str(uuid.uuid4()))
    with ctx.db.session() as session:
        row = jobs.create(
            session, org="o", user_id="u", experiment_id=experiment.id, action="annotation", specs={"round_size": 1}
        )
        state = {"round": 0, "baseline": 0, "best_key_metric": None, "train_job": None}
        assert jobs.transition(session, row, JobStatus.RUNNING, "Waiting for annotations.", result=state)
        job_id = row.id
    controller = AnnotationController(ctx, job_id)
    controller.train_dataset = str(uuid.uuid4())
    return job_id, controller, experiment


def _children(ctx: Context, job_id: str) -> list[Job]:
    with ctx.db.session() as session:
        return [j for j in session.query(Job).filter(Job.parent_id == job_id)]


def test_cancel_before_the_controller_starts_a_round_creates_no_train_job(ctx):
    job_id, controller, experiment = _annotation_job(ctx)
    with ctx.db.session() as stale_session:
        stale = stale_session.get(Job, job_id)  # the controller read it Running...
        assert cancel(ctx, job_id)[0] == f"Running job {job_id} cancelled"  # ...then a cancel committed
        assert not controller._start_round(stale_session, stale, dict(stale.result), experiment)
    assert _children(ctx, job_id) == []
    row = status_of(ctx, job_id)
    assert row.status == "Canceled" and row.result["detailed_status"]["message"] == "Canceled by the user."


def test_cancel_with_a_stale_row_after_a_round_started_cancels_its_train_job(ctx):
    job_id, controller, experiment = _annotation_job(ctx)
    with ctx.db.session() as stale_session:
        stale = stale_session.get(Job, job_id)  # the cancel read it (and no children) first...
        with ctx.db.session() as session:  # ...then the controller committed a round
            row = session.get(Job, job_id)
            assert controller._start_round(session, row, dict(row.result), experiment)
        message, to_kill = begin_cancel(stale_session, stale)
    assert message == f"Running job {job_id} cancelled" and to_kill == []
    (train,) = _children(ctx, job_id)
    assert train.status == "Canceled" and status_of(ctx, job_id).status == "Canceled"
